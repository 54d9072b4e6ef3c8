//! The checks of single values: durations, lock names, texts that go into the record.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::record::MAX_SLOTS;

/// Longest duration accepted anywhere: a century, so millisecond arithmetic cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `90s`, `1h 30m` or bare seconds `3600`.
pub fn parse_duration(flag: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    let parsed = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().map(Duration::from_secs).map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(v).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(Error::Usage(format!("{flag} {value:?} is too long (at most 100 years)"))),
        Err(why) => Err(Error::Usage(format!(
            "{flag} {value:?} is not a duration ({why}); use seconds (3600) or units (90s, 1h 30m)"
        ))),
    }
}

/// Parses a duration of `flag` that must be longer than 0.
pub fn positive(flag: &str, value: &str) -> Result<Duration> {
    let d = parse_duration(flag, value)?;
    if d.is_zero() {
        return Err(Error::Usage(format!("{flag} must be longer than 0")));
    }
    Ok(d)
}

/// Checks a lock name: not empty, at most 1024 bytes, no control characters.
pub fn validate_lock(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::Usage("the lock name is empty; pass --lock NAME".into()));
    }
    if name.len() > 1024 {
        return Err(Error::Usage(format!(
            "the lock name is {} bytes long; at most 1024 are allowed",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::Usage(format!("the lock name {name:?} contains the control character {c:?}")));
    }
    Ok(name.to_string())
}

/// Checks a text that is stored in the record and printed into dotenv outputs (`--owner`,
/// `--reason`): not empty, at most 1024 bytes, no control characters (a newline would
/// forge a line of the dotenv and `$GITHUB_ENV` outputs).
pub fn validate_text(what: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::Usage(format!("the {what} is empty")));
    }
    if value.len() > 1024 {
        return Err(Error::Usage(format!(
            "the {what} is {} bytes long; at most 1024 are allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::Usage(format!("the {what} contains the control character {c:?}")));
    }
    Ok(value.to_string())
}

/// Checks `--slots N`: 1 to [`MAX_SLOTS`], the most a record can hold within DynamoDB's item
/// limit (see `record::MAX_SLOTS`).
pub fn check_slots(n: u32) -> Result<u32> {
    if n == 0 || n > MAX_SLOTS {
        return Err(Error::Usage(format!(
            "--slots {n} is out of range: a lock has 1 to {MAX_SLOTS} slots (the most its record holds within DynamoDB's 400 KB item limit)"
        )));
    }
    Ok(n)
}
