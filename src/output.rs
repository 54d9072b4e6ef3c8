//! What the commands print: result lines for people, JSON for scripts, dotenv lines and the
//! GitHub outputs of a grant, and the progress line of a wait.

use std::io::Write as _;
use std::time::Duration;

use crate::ci::Env;
use crate::cli::Output;
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::locker::{Grant, How, WaitReport};
use crate::queue::{self, QueueMode};
use crate::record::Record;
use crate::store::{Observed, State};

/// Prints `json` for `--output json`, else `text`.
pub(crate) fn emit(output: Output, text: &str, json: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let r = match output {
        Output::Json => writeln!(out, "{json}"),
        _ => writeln!(out, "{text}"),
    };
    r.map_err(|e| Error::other("cannot write to standard output", e))
}

fn env_lines(g: &Grant) -> String {
    format!(
        "PIPELINE_LOCK_NAME={}\nPIPELINE_LOCK_OWNER={}\nPIPELINE_LOCK_TOKEN={}\nPIPELINE_LOCK_FENCE={}\nPIPELINE_LOCK_SLOT={}\n",
        g.lock, g.owner, g.token, g.fence, g.slot
    )
}

/// `, slot 2 of 3 (shared)`: where a grant of a pool sits; nothing for a plain mutex.
fn slot_text(g: &Grant) -> String {
    match (g.slots, g.shared) {
        (1, false) => String::new(),
        (n, true) => format!(", slot {} of {n} (shared)", g.slot),
        (n, false) => format!(", all {n} slots (exclusive)"),
    }
}

/// `acquired lock "x" in file:///d as alice: fence 3, lease until ...`.
fn grant_text(g: &Grant) -> String {
    let how = match &g.how {
        How::Acquired => String::new(),
        How::Reentered => " (already ours: lease renewed, same fence)".into(),
        How::TookOver { from, why } => format!(" (taken over from {from}: {why})"),
    };
    let lease = match g.lease_expires_at {
        Some(t) => format!("lease until {}", rfc3339(t)),
        None => "no lease end (--disable-ttl)".into(),
    };
    format!(
        "acquired lock {:?} in {} as {}: fence {}{}, {lease}{how}",
        g.lock,
        g.store,
        g.owner,
        g.fence,
        slot_text(g)
    )
}

/// Prints a grant: a line, its JSON (with the request count), or its dotenv lines.
pub(crate) fn print_grant(g: &Grant, output: Output, requests: u64, write_units: Option<f64>) -> Result<()> {
    let text = grant_text(g);
    match output {
        Output::Env => {
            print!("{}", env_lines(g));
            Ok(())
        }
        _ => {
            let mut json = serde_json::to_value(g).map_err(|e| Error::other("cannot encode the grant", e))?;
            json["requests"] = requests.into();
            if let Some(units) = write_units {
                json["write_units"] = units.into();
            }
            emit(output, &text, &json)
        }
    }
}

/// Appends the grant to `$GITHUB_ENV` and `$GITHUB_OUTPUT` when they are set.
pub(crate) fn export_github(env: Env<'_>, g: &Grant) -> Result<()> {
    let outputs = format!(
        "name={}\nowner={}\ntoken={}\nfence={}\nslot={}\n",
        g.lock, g.owner, g.token, g.fence, g.slot
    );
    append_github(env, &[("GITHUB_ENV", env_lines(g)), ("GITHUB_OUTPUT", outputs)])
}

/// What a grant of several locks exports (dotenv lines, `$GITHUB_ENV`): the names as a JSON
/// list (`PIPELINE_LOCK_NAMES`, which later commands read as their `--lock` list), the owner,
/// and each lock's fence as a JSON object (`PIPELINE_LOCK_FENCES`). No token: each lock has
/// its own, and later jobs find their grants by owner. JSON keeps names with any character
/// but the control characters (refused in names) on one line.
pub(crate) fn env_lines_all(grants: &[Grant]) -> Result<String> {
    let (names, fences) = names_and_fences(grants)?;
    let owner = grants.first().map(|g| g.owner.as_str()).unwrap_or_default();
    Ok(format!(
        "PIPELINE_LOCK_NAMES={names}\nPIPELINE_LOCK_OWNER={owner}\nPIPELINE_LOCK_FENCES={fences}\n"
    ))
}

/// The names as a JSON list and the fences as a JSON object, each on one line.
pub(crate) fn names_and_fences(grants: &[Grant]) -> Result<(String, String)> {
    let names: Vec<&str> = grants.iter().map(|g| g.lock.as_str()).collect();
    let fences: serde_json::Map<String, serde_json::Value> = grants.iter().map(|g| (g.lock.clone(), g.fence.into())).collect();
    let enc = |e| Error::other("cannot encode the lock names", e);
    Ok((serde_json::to_string(&names).map_err(enc)?, serde_json::to_string(&fences).map_err(enc)?))
}

/// Prints a grant of several locks: a line each, one JSON document (`locks`: each grant), or
/// the dotenv lines of [`env_lines_all`].
pub(crate) fn print_grants(grants: &[Grant], output: Output, requests: u64, write_units: Option<f64>) -> Result<()> {
    if output == Output::Env {
        print!("{}", env_lines_all(grants)?);
        return Ok(());
    }
    let text: Vec<String> = grants.iter().map(grant_text).collect();
    let mut json = serde_json::json!({
        "locks": grants,
        "store": grants.first().map(|g| g.store.clone()),
        "requests": requests,
    });
    if let Some(units) = write_units {
        json["write_units"] = units.into();
    }
    emit(output, &text.join("\n"), &json)
}

/// Appends a grant of several locks to `$GITHUB_ENV` ([`env_lines_all`]) and `$GITHUB_OUTPUT`
/// (`names`, `owner`, `fences`) when they are set.
pub(crate) fn export_github_all(env: Env<'_>, grants: &[Grant]) -> Result<()> {
    let (names, fences) = names_and_fences(grants)?;
    let owner = grants.first().map(|g| g.owner.as_str()).unwrap_or_default();
    let outputs = format!("names={names}\nowner={owner}\nfences={fences}\n");
    append_github(env, &[("GITHUB_ENV", env_lines_all(grants)?), ("GITHUB_OUTPUT", outputs)])
}

fn append_github(env: Env<'_>, files: &[(&str, String)]) -> Result<()> {
    for (var, text) in files {
        if let Some(path) = env(var).filter(|p| !p.is_empty()) {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| Error::other(format!("cannot append the lock's outputs to ${var} ({path})"), e))?;
        }
    }
    Ok(())
}

/// A wait for people: whole seconds (`1m 5s`), or `<1s`.
pub(crate) fn waited_text(ms: u64) -> String {
    match ms / 1000 {
        0 => "<1s".into(),
        s => humantime::format_duration(Duration::from_secs(s)).to_string(),
    }
}

fn ago(now: i64, then: i64) -> String {
    let d = Duration::from_secs(((now - then).max(0) / 1000) as u64);
    humantime::format_duration(d).to_string()
}

/// `lease left 5m`, `lease ended` or `no lease end`.
fn lease_left(end: Option<i64>, now: i64) -> String {
    match end {
        Some(end) if end > now => format!("lease left {}", ago(end, now)),
        Some(_) => "lease ended".into(),
        None => "no lease end".into(),
    }
}

/// The line printed while waiting.
pub fn progress_line(r: &WaitReport) -> String {
    let h = &r.holder;
    let waited = format!(
        "attempt {}, waited {}",
        r.attempt,
        humantime::format_duration(Duration::from_secs(r.waited.as_secs()))
    );
    let queue = queue_line(r);
    if h.is_free() {
        return format!(
            "waiting for lock {:?} in {}: free, but others are ahead of us{queue}; {waited}",
            r.lock, r.store
        );
    }
    if h.owner.is_none() {
        let mode = if r.shared {
            "shared: waiting for a free slot"
        } else {
            "exclusive: waiting until nobody holds it"
        };
        return format!(
            "waiting for lock {:?} in {}: held by {}{queue}; {mode}; {waited}",
            r.lock,
            r.store,
            h.holders_text()
        );
    }
    let url = h
        .holder
        .as_ref()
        .and_then(|x| x.url.as_deref())
        .map(|u| format!(" ({u})"))
        .unwrap_or_default();
    let since = h
        .acquired_at
        .map(|a| format!(" since {} ({} ago)", rfc3339(a), ago(r.now, a)))
        .unwrap_or_default();
    let lease = lease_left(h.lease_expires_at, r.now);
    let takeover = match r.takeover_at {
        Some(at) if at > r.now => format!("takeover possible in {}", ago(at, r.now)),
        Some(_) => "takeover possible now".into(),
        None => "no takeover possible (no lease end and no --force-after)".into(),
    };
    format!(
        "waiting for lock {:?} in {}: held by {}{url}{since}, fence {}, {lease}{queue}; {waited}; {takeover}",
        r.lock,
        r.store,
        h.owner.as_deref().unwrap_or("?"),
        h.fence,
    )
}

/// `; queue (fifo): 2nd of 3, ahead: OWNER (URL)`, or nothing when nobody else waits.
fn queue_line(r: &WaitReport) -> String {
    let Some(position) = r.position else {
        return if r.queued > 1 {
            format!("; {} waiting (--queue none: first writer wins)", r.queued)
        } else {
            String::new()
        };
    };
    if r.queued <= 1 && position == 1 {
        return String::new();
    }
    let mut ahead: Vec<String> = r
        .ahead
        .iter()
        .take(3)
        .map(|(owner, url)| match url {
            Some(u) => format!("{owner} ({u})"),
            None => owner.clone(),
        })
        .collect();
    if r.ahead.len() > 3 {
        ahead.push(format!("and {} more", r.ahead.len() - 3));
    }
    let ahead = if ahead.is_empty() {
        "next in line".to_string()
    } else {
        format!("ahead: {}", ahead.join(", "))
    };
    format!("; queue ({}): position {position} of {}, {ahead}", r.queue.as_str(), r.queued)
}

/// One line about a lock, as `list` shows it and `status` starts.
pub(crate) fn summary(o: &Observed, now: i64) -> String {
    match &o.state {
        State::Absent => "absent".into(),
        State::Corrupt(why) => format!("UNREADABLE ({why})"),
        State::Valid(r) if r.is_free() => format!("free\tfence {}", r.fence),
        State::Valid(r) if r.owner.is_none() => {
            let holds: Vec<String> = r
                .holds()
                .iter()
                .map(|(k, h)| format!("{k}:{} (fence {}, for {})", h.owner, h.fence, ago(now, h.acquired_at)))
                .collect();
            format!("shared by {} of {}\t{}", holds.len(), r.slot_count(), holds.join(", "))
        }
        State::Valid(r) => {
            let lease = lease_left(r.lease_expires_at, now);
            format!(
                "held by {}\tfence {}\tfor {}\t{lease}",
                r.owner.as_deref().unwrap_or("?"),
                r.fence,
                ago(now, r.acquired_at.unwrap_or(now))
            )
        }
    }
}

/// A lock for `status --output json` and each entry of `list --output json`.
pub(crate) fn status_json(lock: &str, o: &Observed, now: i64, requests: u64) -> serde_json::Value {
    let (state, record, problem) = match &o.state {
        State::Absent => ("absent", None, None),
        State::Corrupt(why) => ("unreadable", None, Some(why.clone())),
        State::Valid(r) if r.is_free() => ("free", Some(r), None),
        State::Valid(_) => ("held", o.record(), None),
    };
    serde_json::json!({
        "lock": lock,
        "state": state,
        "record": record,
        "problem": problem,
        "now": now,
        "lease_left_ms": record.and_then(|r: &Record| r.lease_expires_at).map(|e| (e - now).max(0)),
        "requests": requests,
    })
}

/// The queue in order, for `status --output json`.
pub(crate) fn queue_json(o: &Observed, now: i64, mode: QueueMode) -> serde_json::Value {
    let Some(r) = o.record() else {
        return serde_json::json!([]);
    };
    let window = queue::prune_window(Duration::ZERO, queue::PRUNE_FLOOR);
    let entries: Vec<_> = queue::ordered(r, mode)
        .into_iter()
        .enumerate()
        .map(|(i, (token, w))| {
            serde_json::json!({
                "position": i + 1,
                "token": token,
                "owner": w.owner,
                "url": w.url,
                "ordinal": w.ordinal,
                "enqueued_at": w.enqueued_at,
                "seen_at": w.seen_at,
                "waiting_ms": (now - w.enqueued_at).max(0),
                "live": queue::is_live(w, now, window),
            })
        })
        .collect();
    serde_json::Value::Array(entries)
}

/// `status` for people: holder, age, lease, fence, queue, history.
pub(crate) fn status_text(lock: &str, url: &str, o: &Observed, now: i64, mode: QueueMode) -> String {
    let mut s = format!("lock:     {lock}\nstore:    {url}\nstate:    {}\n", summary(o, now));
    if let State::Valid(r) = &o.state {
        if let Some(h) = &r.holder {
            for (k, v) in [
                ("pipeline", &h.url),
                ("job", &h.job),
                ("job url", &h.job_url),
                ("host", &h.host),
                ("reason", &h.reason),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!("{:<9} {v}\n", format!("{k}:")));
                }
            }
        }
        if let Some(a) = r.acquired_at {
            s.push_str(&format!("since:    {} ({} ago)\n", rfc3339(a), ago(now, a)));
        }
        if let Some(e) = r.lease_expires_at.filter(|_| !r.is_free()) {
            s.push_str(&format!("lease:    ends {}\n", rfc3339(e)));
        }
        s.push_str(&format!("fence:    {}\n", r.fence));
        if r.slot_count() > 1 || !r.shared.is_empty() {
            s.push_str(&format!("slots:    {} ({} shared hold(s))\n", r.slot_count(), r.shared.len()));
        }
        for (k, h) in r.holds() {
            let lease = lease_left(h.lease_expires_at, now);
            let url = h
                .holder
                .as_ref()
                .and_then(|x| x.url.as_deref())
                .map(|u| format!(" {u}"))
                .unwrap_or_default();
            s.push_str(&format!(
                "  slot {k}: {} shared, fence {}, for {}, {lease}{url}\n",
                h.owner,
                h.fence,
                ago(now, h.acquired_at)
            ));
        }
        if r.waiters.is_empty() {
            s.push_str("queue:    empty\n");
        } else {
            s.push_str(&format!("queue:    ({} order)\n", mode.as_str()));
            let window = queue::prune_window(Duration::ZERO, queue::PRUNE_FLOOR);
            for (i, (_, w)) in queue::ordered(r, mode).into_iter().enumerate() {
                let ordinal = w.ordinal.map(|n| format!(" pipeline {n}")).unwrap_or_default();
                let url = w.url.as_deref().map(|u| format!(" {u}")).unwrap_or_default();
                let stale = if queue::is_live(w, now, window) {
                    String::new()
                } else {
                    format!(" (unseen for {}: dead, pruned next)", ago(now, w.seen_at))
                };
                s.push_str(&format!(
                    "  {}. {}{ordinal} waiting {}{url}{stale}\n",
                    i + 1,
                    w.owner,
                    ago(now, w.enqueued_at)
                ));
            }
        }
        if !r.history.is_empty() {
            s.push_str("history:\n");
            for e in &r.history {
                let by = e.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
                let why = e.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                let waited = e.waited.map(|w| format!(" after waiting {}", waited_text(w))).unwrap_or_default();
                s.push_str(&format!(
                    "  {} {:<10} {} fence {}{by}{waited}{why}\n",
                    rfc3339(e.at),
                    e.event.as_str(),
                    e.owner,
                    e.fence.unwrap_or(0)
                ));
            }
        }
    }
    s.trim_end().to_string()
}
