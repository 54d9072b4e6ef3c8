//! State beside the lock (docs/design.md, "State beside the lock (v2)"): small values kept in the
//! lock store, each with a version and the fence of its last writer, so that "which commit is
//! deployed on prod" survives the job that deployed it and a stale holder's late write is
//! refused. The decision of a write is a pure function of what was read ([`refusal`],
//! [`next_entry`]); each store only carries it out under its own compare-and-set (see
//! [`StateStore`]).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::store::StoreUrl;
use crate::store::aws::AwsOptions;

/// The largest value a key holds, in bytes: well inside DynamoDB's 400 KB item and cheap to
/// read on every poll of a script.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The longest key, in bytes, before a store's own limit (a lock name's bound).
pub const MAX_KEY_BYTES: usize = 1024;

/// How a value was given, and so how `get --output json` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Text, as given.
    #[default]
    Text,
    /// A JSON document (stored compact).
    Json,
}

/// One key's stored entry; the JSON field names are the DynamoDB attribute names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    #[serde(rename = "StateKey")]
    pub key: String,
    /// The value; `None` after a delete (the entry stays, so its version and fence go on).
    #[serde(rename = "Value", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Text or JSON.
    #[serde(rename = "Format", default)]
    pub format: Format,
    /// +1 on every write, delete included; 0 means never written.
    #[serde(rename = "Version")]
    pub version: u64,
    /// The highest fence any write brought: a write with a lower one is refused.
    #[serde(rename = "Fence")]
    pub fence: u64,
    /// Who wrote last (the CI owner, or `--owner`).
    #[serde(rename = "Writer")]
    pub writer: String,
    /// When, in store-clock unix milliseconds.
    #[serde(rename = "WrittenAt")]
    pub written_at: i64,
}

/// One write: a put (`value` is `Some`) or a delete (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The key, checked ([`check_key`]).
    pub key: String,
    /// The new value with its format; `None` deletes it.
    pub value: Option<(String, Format)>,
    /// The writer's fence (its lock grant's); 0 for a writer without one.
    pub fence: u64,
    /// Only if the stored version is still this one (0: never written).
    pub if_version: Option<u64>,
    /// Who writes.
    pub writer: String,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A writer with a newer fence wrote since: we are a stale holder.
    Fence {
        /// The stored fence.
        stored: u64,
    },
    /// The value changed since the version the writer read.
    Version {
        /// The stored version.
        stored: u64,
    },
}

/// The answer to a write: a refusal is a value, with what is stored instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWritten {
    /// Written; the entry as it is now.
    Done(Entry),
    /// Refused; why, and what is stored.
    Refused(Refusal, Option<Entry>),
}

/// Is `w` refused over `current`? The fence first: a stale holder is told that it is one,
/// whatever its version says.
pub fn refusal(w: &StateWrite, current: Option<&Entry>) -> Option<Refusal> {
    let (fence, version) = current.map_or((0, 0), |e| (e.fence, e.version));
    if w.fence < fence {
        return Some(Refusal::Fence { stored: fence });
    }
    match w.if_version {
        Some(v) if v != version => Some(Refusal::Version { stored: version }),
        _ => None,
    }
}

/// The entry `w` writes over `current` (which it must not be refused over), at store time `now`.
pub fn next_entry(w: &StateWrite, current: Option<&Entry>, now: i64) -> Entry {
    let (value, format) = match &w.value {
        Some((v, f)) => (Some(v.clone()), *f),
        None => (None, current.map(|e| e.format).unwrap_or_default()),
    };
    Entry {
        key: w.key.clone(),
        value,
        format,
        version: current.map_or(0, |e| e.version) + 1,
        fence: current.map_or(w.fence, |e| e.fence.max(w.fence)),
        writer: w.writer.clone(),
        written_at: now,
    }
}

/// Rounds of read-and-write a store tries when other writers keep winning, before it gives up.
pub(crate) const WRITE_ROUNDS: u32 = 8;

/// Values beside the locks, under the store's compare-and-set.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The store's URL, for messages.
    fn url(&self) -> String;

    /// Requests sent so far.
    fn requests(&self) -> u64;

    /// The store's clock (for `WrittenAt`).
    fn clock(&self) -> &StoreClock;

    /// The key's entry, `None` when it was never written. Strongly consistent.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Writes conditionally: refused as [`refusal`] says over what is stored at the moment of
    /// the write, never over an older read.
    async fn write(&self, w: &StateWrite) -> Result<StateWritten>;
}

/// Opens the state of the store a URL names (the same place as its locks).
pub async fn open(url: &StoreUrl, aws: &AwsOptions) -> Result<Arc<dyn StateStore>> {
    use crate::store::{dynamo, file, s3};
    Ok(match url {
        StoreUrl::DynamoDb { table } => Arc::new(dynamo::DynamoStore::connect(table, aws).await?),
        StoreUrl::File { dir } => Arc::new(file::FileStore::open(dir)?),
        StoreUrl::S3 { bucket, prefix } => Arc::new(s3::S3Store::connect(bucket, prefix, aws).await?),
    })
}

/// Checks a key: not empty, at most [`MAX_KEY_BYTES`], no control characters, and short
/// enough for the store once encoded (a file name has 255 bytes, an S3 key 1024).
pub fn check_key(url: &StoreUrl, key: &str) -> Result<String> {
    if key.is_empty() {
        return Err(Error::Usage("the state key is empty; pass a KEY such as deployed/prod".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::Usage(format!(
            "the state key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::Usage(format!("the state key {key:?} contains the control character {c:?}")));
    }
    let (what, len, limit) = match url {
        StoreUrl::DynamoDb { .. } => return Ok(key.to_string()),
        StoreUrl::File { .. } => ("file name", crate::store::file::state_file_name(key).len(), 255),
        StoreUrl::S3 { prefix, .. } => ("object key", crate::store::s3::state_object_key(prefix, key).len(), 1024),
    };
    if len > limit {
        return Err(Error::Usage(format!(
            "the state key is too long for {url}: its {what} would be {len} bytes once encoded \
             (every byte but A-Z a-z 0-9 . _ - takes three), and the store allows at most {limit}; use a shorter key"
        )));
    }
    Ok(key.to_string())
}

/// Checks a value to put: UTF-8, at most [`MAX_VALUE_BYTES`]; with `json`, a JSON document,
/// kept compact. `what` says where it came from, for the message.
pub fn check_value(what: &str, bytes: Vec<u8>, json: bool) -> Result<(String, Format)> {
    let too_big = |len: usize| {
        Error::Usage(format!(
            "the value of {what} is {len} bytes; a state value holds at most {MAX_VALUE_BYTES} (64 KiB): \
             keep the big artefact elsewhere and store its address"
        ))
    };
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(too_big(bytes.len()));
    }
    let text = String::from_utf8(bytes).map_err(|_| Error::Usage(format!("the value of {what} is not UTF-8 text")))?;
    if !json {
        return Ok((text, Format::Text));
    }
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Usage(format!("the value of {what} is not JSON (--json): {e}")))?;
    let compact = doc.to_string();
    if compact.len() > MAX_VALUE_BYTES {
        return Err(too_big(compact.len()));
    }
    Ok((compact, Format::Json))
}

/// The error for a refused write (exit 79), naming the key, the store and what to do.
pub fn refused_error(url: &str, w: &StateWrite, why: &Refusal, current: Option<&Entry>) -> Error {
    let verb = if w.value.is_some() { "put" } else { "delete" };
    let last = current
        .map(|e| format!(" (last written by {} at {})", e.writer, crate::clock::rfc3339(e.written_at)))
        .unwrap_or_default();
    let message = match why {
        Refusal::Fence { stored } if w.fence == 0 => format!(
            "state {verb} of {:?} in {url} refused: this write carries no fence (--fence, PIPELINE_LOCK_FENCE) \
             and the key was written under fence {stored}{last}; write it from the lock's holder (acquire exports \
             PIPELINE_LOCK_FENCE, run gives it to its command), or name that fence with --fence {stored}",
            w.key
        ),
        Refusal::Fence { stored } => format!(
            "state {verb} of {:?} in {url} refused: fence {} is below the stored fence {stored}{last}; a newer \
             holder of the lock wrote since, so this job's grant is stale: leave the value alone",
            w.key, w.fence
        ),
        Refusal::Version { stored } => format!(
            "state {verb} of {:?} in {url} refused: the stored version is {stored}, not --if-version {}{last}; \
             it changed since it was read: read it again (state get) and decide again",
            w.key,
            w.if_version.unwrap_or_default()
        ),
    };
    Error::StateRefused { message, key: w.key.clone() }
}

#[cfg(test)]
mod tests;
