//! The queue in the lock record's `Waiters` map (docs/design.md, "The queue and early takeover"), as pure
//! functions of what was read and what time it is: who is live, in which order, who is ahead
//! of whom, which entries are stale, and whether a newer pipeline supersedes us. The waiting
//! loop in [`crate::locker`] decides with these; the stores only write the entries.

use crate::clock::ms;
use std::cmp::Reverse;
use std::time::Duration;

use crate::record::{Record, Waiter};

/// Who gets a free lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// The oldest live waiter.
    #[default]
    Fifo,
    /// The live waiter with the highest ordinal (the newest pipeline); ties by arrival.
    Newest,
    /// Whoever writes first (no ordering; waiters still show in `status`).
    None,
}

impl QueueMode {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMode::Fifo => "fifo",
            QueueMode::Newest => "newest",
            QueueMode::None => "none",
        }
    }
}

/// The default floor of the prune window: an entry unseen for this long is dead whatever the
/// retry interval.
pub const PRUNE_FLOOR: Duration = Duration::from_secs(30);

/// How long an entry may go unseen before it is dead: three retry intervals, at least `floor`.
pub fn prune_window(retry_interval: Duration, floor: Duration) -> Duration {
    (retry_interval * 3).max(floor)
}

/// How often a waiter refreshes its `SeenAt`: every half window. A refresh rides on the next
/// poll after it is due, and one refused by a concurrent write is tried again on the poll
/// after, so several polls fit before anyone may prune the entry.
pub fn refresh_every(window: Duration) -> Duration {
    window / 2
}

/// How long `w` may go unseen: its own window (from its own retry interval) or the
/// observer's, whichever is longer, so a slow poller is never judged by a fast one.
fn window_of(w: &Waiter, window: Duration) -> i64 {
    ms(window).max(w.window.unwrap_or(0))
}

/// Is the entry live at store time `now`? (Callers widen `window` by their clock's uncertainty.)
pub fn is_live(w: &Waiter, now: i64, window: Duration) -> bool {
    w.seen_at.saturating_add(window_of(w, window)) >= now
}

/// Pruning of dead entries, as a waiter's queue write does it: at store time `now`, with
/// the writer's window for entries that carry none of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prune {
    /// Store ms.
    pub now: i64,
    /// The writer's window.
    pub window: Duration,
}

impl Prune {
    /// The SeenAt below which `w` is dead.
    pub fn cut(&self, w: &Waiter) -> i64 {
        self.now.saturating_sub(window_of(w, self.window))
    }

    /// Is `w` dead?
    pub fn is_dead(&self, w: &Waiter) -> bool {
        w.seen_at < self.cut(w)
    }
}

/// Sort key of an entry under `mode`: smaller goes first.
fn key<'a>(mode: QueueMode, token: &'a str, w: &Waiter) -> (Reverse<u64>, i64, &'a str) {
    let ordinal = match mode {
        QueueMode::Newest => w.ordinal.unwrap_or(0),
        _ => 0,
    };
    (Reverse(ordinal), w.enqueued_at, token)
}

/// Every entry in queue order (live and stale alike), for `status`.
pub fn ordered(record: &Record, mode: QueueMode) -> Vec<(&String, &Waiter)> {
    let mut all: Vec<_> = record.waiters.iter().collect();
    all.sort_by(|a, b| key(mode, a.0, a.1).cmp(&key(mode, b.0, b.1)));
    all
}

/// The waiter asking: its queue token and what its entry says (or would say).
#[derive(Debug, Clone, PartialEq)]
pub struct Me<'a> {
    /// Its key in `Waiters`.
    pub token: &'a str,
    /// Its entry: registered, or the one it would register now.
    pub entry: &'a Waiter,
}

/// The live entries ahead of `me` under `mode`, in order. Entries of our own owner never
/// count: they are this pipeline (an earlier attempt of a retried job, or a sibling job that
/// would make our acquire re-entrant), and waiting for ourselves would never end.
pub fn ahead<'r>(record: &'r Record, me: &Me<'_>, mode: QueueMode, now: i64, window: Duration) -> Vec<(&'r String, &'r Waiter)> {
    if mode == QueueMode::None {
        return Vec::new();
    }
    let mine = key(mode, me.token, me.entry);
    ordered(record, mode)
        .into_iter()
        .filter(|(t, w)| t.as_str() != me.token && w.owner != me.entry.owner && is_live(w, now, window))
        .filter(|(t, w)| key(mode, t, w) < mine)
        .collect()
}

/// Live entries, for the position line: how many wait besides those ahead.
pub fn live_count(record: &Record, me: &Me<'_>, now: i64, window: Duration) -> usize {
    record
        .waiters
        .iter()
        .filter(|(t, w)| t.as_str() != me.token && w.owner != me.entry.owner && is_live(w, now, window))
        .count()
}

/// Tokens of entries unseen for the whole window, except `keep` (our own).
pub fn stale(record: &Record, keep: &str, now: i64, window: Duration) -> Vec<String> {
    record
        .waiters
        .iter()
        .filter(|(t, w)| t.as_str() != keep && !is_live(w, now, window))
        .map(|(t, _)| t.clone())
        .collect()
}

/// The project part of a CI owner string: `gitlab:HOST/PROJECT` of
/// `gitlab:HOST/PROJECT/pipelines/ID[/jobs/ID]`, `github:HOST/OWNER/REPO` of
/// `github:HOST/OWNER/REPO/runs/ID[/...]`; `None` for owners given by hand (`--owner`), which
/// all count as one project.
pub fn project_of(owner: &str) -> Option<&str> {
    let (marker, rest) = if let Some(rest) = owner.strip_prefix("gitlab:") {
        ("/pipelines/", rest)
    } else if let Some(rest) = owner.strip_prefix("github:") {
        ("/runs/", rest)
    } else {
        return None;
    };
    let at = rest.rfind(marker)?;
    Some(&owner[..owner.len() - rest.len() + at])
}

/// Who supersedes a waiter of `owner` with `ordinal`: a live waiter or the holder of the same
/// project with a higher ordinal. Without an ordinal of our own nothing can be newer.
pub fn superseded_by(record: &Record, owner: &str, ordinal: Option<u64>, now: i64, window: Duration) -> Option<String> {
    let mine = ordinal?;
    let project = project_of(owner);
    let newer = |o: &str, n: Option<u64>| o != owner && project_of(o) == project && n.is_some_and(|n| n > mine);
    if let (Some(h), Some(details)) = (record.owner.as_deref(), record.holder.as_ref())
        && newer(h, details.ordinal)
    {
        return Some(format!("{h} (pipeline {}) holds it", details.ordinal.unwrap_or_default()));
    }
    record
        .waiters
        .values()
        .filter(|w| is_live(w, now, window) && newer(&w.owner, w.ordinal))
        .max_by_key(|w| w.ordinal)
        .map(|w| format!("{} (pipeline {}) waits for it", w.owner, w.ordinal.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Holder;

    fn w(owner: &str, enqueued: i64, seen: i64, ordinal: Option<u64>) -> Waiter {
        Waiter {
            owner: owner.into(),
            enqueued_at: enqueued,
            seen_at: seen,
            ordinal,
            url: None,
            window: None,
            shared: false,
        }
    }

    fn queue(entries: &[(&str, Waiter)]) -> Record {
        let mut r = Record::vacant("l");
        for (t, e) in entries {
            r.waiters.insert(t.to_string(), e.clone());
        }
        r
    }

    const WIN: Duration = Duration::from_secs(30);

    #[test]
    fn fifo_puts_the_oldest_live_waiter_first() {
        let r = queue(&[
            ("a", w("A", 100, 50_000, Some(9))),
            ("b", w("B", 200, 50_000, Some(1))),
            ("dead", w("D", 50, 1_000, None)),
        ]);
        let late = w("C", 300, 50_000, Some(5));
        let me = Me { token: "c", entry: &late };
        let ahead: Vec<_> = ahead(&r, &me, QueueMode::Fifo, 60_000, WIN)
            .into_iter()
            .map(|(t, _)| t.as_str())
            .collect();
        // "dead" is older but unseen for longer than the window.
        assert_eq!(ahead, vec!["a", "b"]);
        let first = w("A", 100, 50_000, Some(9));
        assert!(super::ahead(&r, &Me { token: "a", entry: &first }, QueueMode::Fifo, 60_000, WIN).is_empty());
        assert_eq!(stale(&r, "c", 60_000, WIN), vec!["dead".to_string()]);
    }

    #[test]
    fn newest_orders_by_ordinal_then_arrival() {
        let r = queue(&[
            ("a", w("A", 100, 50_000, Some(9))),
            ("b", w("B", 200, 50_000, Some(1))),
            ("n", w("N", 150, 50_000, None)),
        ]);
        let me_entry = w("C", 300, 50_000, Some(5));
        let me = Me {
            token: "c",
            entry: &me_entry,
        };
        let ahead: Vec<_> = ahead(&r, &me, QueueMode::Newest, 60_000, WIN)
            .into_iter()
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(ahead, vec!["a"]);
        let order: Vec<_> = ordered(&r, QueueMode::Newest).into_iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(order, vec!["a", "b", "n"]);
        assert!(super::ahead(&r, &me, QueueMode::None, 60_000, WIN).is_empty());
    }

    #[test]
    fn our_own_owner_never_blocks_us() {
        let r = queue(&[("old", w("me", 1, 59_000, None))]);
        let entry = w("me", 500, 60_000, None);
        assert!(ahead(&r, &Me { token: "new", entry: &entry }, QueueMode::Fifo, 60_000, WIN).is_empty());
    }

    #[test]
    fn a_slow_poller_is_judged_by_its_own_window() {
        // Queued first, polling every 60 s (window 180 s); observed by a 2 s poller (30 s).
        let mut slow = w("slow", 1, 0, None);
        slow.window = Some(180_000);
        let r = queue(&[("s", slow.clone()), ("f", w("fast", 2, 100_000, None))]);
        assert!(is_live(&slow, 100_000, WIN));
        assert!(stale(&r, "f", 100_000, WIN).is_empty());
        let entry = w("fast", 2, 100_000, None);
        let me = Me { token: "f", entry: &entry };
        assert_eq!(ahead(&r, &me, QueueMode::Fifo, 100_000, WIN).len(), 1);
        let prune = Prune { now: 100_000, window: WIN };
        assert!(!prune.is_dead(&slow));
        assert!(prune.is_dead(&w("old", 1, 0, None)));
        // Past its own window it is dead like any other.
        assert!(!is_live(&slow, 180_001, WIN));
        assert!(Prune { now: 180_001, window: WIN }.is_dead(&slow));
    }

    #[test]
    fn window_has_a_floor() {
        assert_eq!(prune_window(Duration::from_secs(2), PRUNE_FLOOR), Duration::from_secs(30));
        assert_eq!(prune_window(Duration::from_secs(20), PRUNE_FLOOR), Duration::from_secs(60));
        assert_eq!(refresh_every(Duration::from_secs(30)), Duration::from_secs(15));
    }

    #[test]
    fn projects_of_owner_strings() {
        assert_eq!(project_of("gitlab:h/g/sub/app/pipelines/5"), Some("gitlab:h/g/sub/app"));
        assert_eq!(project_of("gitlab:h/g/app/pipelines/5/jobs/7"), Some("gitlab:h/g/app"));
        assert_eq!(project_of("github:h/o/r/runs/9/jobs/x/attempts/1"), Some("github:h/o/r"));
        assert_eq!(project_of("alice"), None);
    }

    #[test]
    fn a_newer_pipeline_of_the_same_project_supersedes() {
        let mut r = queue(&[("n", w("gitlab:h/g/app/pipelines/90", 1, 50_000, Some(12)))]);
        let me = "gitlab:h/g/app/pipelines/80";
        assert!(superseded_by(&r, me, Some(11), 60_000, WIN).unwrap().contains("pipelines/90"));
        assert_eq!(superseded_by(&r, me, Some(12), 60_000, WIN), None);
        assert_eq!(superseded_by(&r, me, None, 60_000, WIN), None);
        // Another project's numbers are not comparable; a dead entry does not count.
        assert_eq!(superseded_by(&r, "gitlab:h/g/other/pipelines/1", Some(1), 60_000, WIN), None);
        assert_eq!(superseded_by(&r, me, Some(11), 90_000, WIN), None);
        r.waiters.clear();
        r.owner = Some("gitlab:h/g/app/pipelines/95".into());
        r.holder = Some(Holder {
            ordinal: Some(13),
            ..Holder::default()
        });
        assert!(superseded_by(&r, me, Some(11), 60_000, WIN).unwrap().contains("holds"));
        // Hand-given owners are one project.
        r.owner = Some("bob".into());
        assert!(superseded_by(&r, "alice", Some(11), 60_000, WIN).is_some());
    }
}
