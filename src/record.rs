//! The lock record: one per lock, the same logical fields in every store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many History events a record keeps (DynamoDB trims in batches, see `store::dynamo`).
pub const HISTORY_LEN: usize = 20;

/// The lock record as docs/design.md ("The record") describes it. Times are store-clock unix milliseconds,
/// except `expires_at`, which is the DynamoDB TTL attribute in unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Record {
    /// The lock name.
    #[serde(rename = "LockID")]
    pub lock_id: String,
    /// Who holds it; `None` when free (a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Random per grant; holder writes are conditional on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Fencing token: +1 on every grant to a new Token; never decreases.
    pub fence: u64,
    /// Record version: new on every holder-side write.
    pub rvn: String,
    /// When the current holder was granted the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<i64>,
    /// The holder's last grant or renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<i64>,
    /// End of the lease; absent with `--disable-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    /// Garbage collection only (DynamoDB TTL, unix seconds). Never read as "free".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Who the holder is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    /// The queue: waiter Token -> entry. Written through untouched by holder writes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub waiters: BTreeMap<String, Waiter>,
    /// The last events, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Event>,
}

/// Details of the holder, for `status` and progress lines.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Holder {
    /// `gitlab`, `github` or `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
    /// Pipeline or workflow-run URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Job URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_url: Option<String>,
    /// Job name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Host name of the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Process id of the tool that wrote the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `--reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Pipeline number (GitLab IID, GitHub run number): higher is newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u64>,
    /// `run` for grants that `pipeline-lock run` holds around its command; absent for
    /// `acquire`'s grants, which later jobs of the pipeline renew and release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// One queued waiter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Waiter {
    /// The waiter's owner string.
    pub owner: String,
    /// When it joined the queue (store ms).
    pub enqueued_at: i64,
    /// When it last showed it is alive (store ms).
    pub seen_at: i64,
    /// Its pipeline number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u64>,
    /// Its pipeline URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How long (ms) it may go unseen before it counts as dead: its own prune window, from its
    /// own retry interval, so a slow poller is not judged by a fast one's interval. Absent in
    /// entries written by older versions: the observer's window then applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
}

/// What happened to the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Granted from free.
    Acquired,
    /// Lease extended by an explicit `renew`.
    Renewed,
    /// Given back.
    Released,
    /// Taken from a stale holder.
    TakenOver,
    /// Taken or released with `--force`.
    Forced,
}

impl EventKind {
    /// The name stored in History.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Acquired => "acquired",
            EventKind::Renewed => "renewed",
            EventKind::Released => "released",
            EventKind::TakenOver => "taken-over",
            EventKind::Forced => "forced",
        }
    }
}

/// One History entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// The owner after the event (or the releasing owner).
    pub owner: String,
    /// The fence after the event; filled in on read where the store left it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Store ms.
    pub at: i64,
    /// Who did it (differs from `owner` for forced releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why: `--reason`, or the takeover rule that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// For takeovers: the owner the lock was taken from, so that owner's later `release` or
    /// `renew` can tell "taken over from us" (exit 76) from "never ours" (exit 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The holder-side fields of one grant.
#[derive(Debug, Clone, PartialEq)]
pub struct Grantee {
    /// New owner.
    pub owner: String,
    /// New token.
    pub token: String,
    /// Who, for people.
    pub holder: Holder,
    /// Queue entries this grant removes in the same write: the grantee's own, and entries the
    /// grantee saw stale. Waiter bookkeeping otherwise never rides on a holder write.
    pub dequeue: Vec<String>,
}

/// What a holder-side write does.
#[derive(Debug, Clone, PartialEq)]
// A handful live per command, passed by value through matches; a Box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// A grant to a new token: from free, or by takeover. Fence +1, AcquiredAt = now.
    Grant(Grantee),
    /// The holder extends its lease (also a re-entrant acquire). Fence kept. `restamp` also
    /// sets AcquiredAt to now: the correction of a grant written before the store clock was known.
    Renew {
        /// Reset AcquiredAt too.
        restamp: bool,
        /// Raise the fence to this (a grant that created the record from absent while this
        /// machine's clock was behind the store's: its fence must still start at store ms).
        raise_fence: Option<u64>,
    },
    /// Back to a free tombstone. Fence kept.
    Release,
}

/// A holder-side change, as the stores apply it. Waiters are never part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What it does.
    pub action: Action,
    /// The new record version.
    pub rvn: String,
    /// Store ms of this write.
    pub now: i64,
    /// New lease end; `None` with `--disable-ttl` and on release.
    pub lease_expires_at: Option<i64>,
    /// New GC time in unix seconds; `None` while held without a lease.
    pub expires_at: Option<i64>,
    /// Where the fence of a record created by this write starts (see [`Record::created`]).
    pub fence_floor: u64,
    /// History entry to append. Its `fence` is left out: it follows from the record (see
    /// [`Record::fill_history_fences`]), so stores that cannot know the new fence before
    /// writing (DynamoDB's atomic ADD) write the same history as the others.
    pub event: Option<Event>,
}

impl Record {
    /// A record that does not exist yet: what a grant on an absent key starts from.
    pub fn vacant(lock: &str) -> Record {
        Record {
            lock_id: lock.to_string(),
            owner: None,
            token: None,
            fence: 0,
            rvn: String::new(),
            acquired_at: None,
            renewed_at: None,
            lease_expires_at: None,
            expires_at: None,
            holder: None,
            waiters: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    /// The record a grant creates where there was none: the key was never used, or its record
    /// was deleted (DynamoDB's TTL, an operator). The fence starts at `Change::fence_floor`,
    /// store-clock ms with room for clock disagreement, above any fence the lost record can
    /// have had (fences move one per grant, far slower than the clock), so fences never go
    /// back (docs/design.md, rule 2).
    pub fn created(lock: &str, change: &Change) -> Record {
        let mut base = Record::vacant(lock);
        base.fence = change.fence_floor;
        base.apply(change)
    }

    /// Is the lock free (a tombstone)?
    pub fn is_free(&self) -> bool {
        self.owner.is_none()
    }

    /// Checks what serde cannot: a held record must carry its token and times.
    pub fn validate(&self, lock: &str) -> Result<(), String> {
        if self.lock_id != lock {
            return Err(format!("LockID is {:?}, expected {:?}", self.lock_id, lock));
        }
        if self.rvn.is_empty() {
            return Err("Rvn is empty".into());
        }
        if self.owner.is_some() {
            for (name, missing) in [
                ("Token", self.token.is_none()),
                ("AcquiredAt", self.acquired_at.is_none()),
                ("RenewedAt", self.renewed_at.is_none()),
            ] {
                if missing {
                    return Err(format!("the record has an Owner but no {name}"));
                }
            }
        } else if self.token.is_some() {
            return Err("the record has a Token but no Owner".into());
        }
        Ok(())
    }

    /// The record after `change`, for stores that rewrite whole records (S3, file).
    /// DynamoDB expresses the same change as an update expression.
    pub fn apply(&self, change: &Change) -> Record {
        let mut next = self.clone();
        next.rvn = change.rvn.clone();
        next.expires_at = change.expires_at;
        next.lease_expires_at = change.lease_expires_at;
        match &change.action {
            Action::Grant(g) => {
                next.fence += 1;
                next.owner = Some(g.owner.clone());
                next.token = Some(g.token.clone());
                next.acquired_at = Some(change.now);
                next.renewed_at = Some(change.now);
                next.holder = Some(g.holder.clone());
                for token in &g.dequeue {
                    next.waiters.remove(token);
                }
            }
            Action::Renew { restamp, raise_fence } => {
                next.renewed_at = Some(change.now);
                if *restamp {
                    next.acquired_at = Some(change.now);
                }
                if let Some(f) = raise_fence {
                    next.fence = next.fence.max(*f);
                }
            }
            Action::Release => {
                next.owner = None;
                next.token = None;
                next.acquired_at = None;
                next.renewed_at = None;
                next.holder = None;
            }
        }
        if let Some(event) = &change.event {
            next.history.push(Event {
                fence: Some(next.fence),
                ..event.clone()
            });
            let excess = next.history.len().saturating_sub(HISTORY_LEN);
            next.history.drain(..excess);
        }
        next
    }

    /// The record after a waiter's own bookkeeping, for whole-record stores: `set` registers or
    /// refreshes one entry, `remove` drops one, and dead entries (see [`crate::queue::Prune`])
    /// go, except the one being set. Nothing else changes, Rvn included: a holder's or a
    /// taker's condition on Token and Rvn still holds afterwards.
    pub fn with_waiters(&self, set: Option<(&str, &Waiter)>, remove: Option<&str>, prune: Option<crate::queue::Prune>) -> Record {
        let mut next = self.clone();
        if let Some(prune) = prune {
            let keep = set.map(|(t, _)| t);
            next.waiters.retain(|t, w| Some(t.as_str()) == keep || !prune.is_dead(w));
        }
        if let Some(token) = remove {
            next.waiters.remove(token);
        }
        if let Some((token, entry)) = set {
            next.waiters.insert(token.to_string(), entry.clone());
        }
        next
    }

    /// Gives every History event its fence. Only grants move the fence, one each, so counting
    /// grant events back from the record's fence recovers the fence of every event.
    pub fn fill_history_fences(&mut self) {
        let mut fence = self.fence;
        for event in self.history.iter_mut().rev() {
            let fence_here = fence;
            if event.event.is_grant() {
                fence = fence.saturating_sub(1);
            }
            event.fence.get_or_insert(fence_here);
        }
    }
}

impl EventKind {
    /// Does this event hand the lock to a new token (and move the fence)?
    pub fn is_grant(self) -> bool {
        matches!(self, EventKind::Acquired | EventKind::TakenOver | EventKind::Forced)
    }
}

#[cfg(test)]
mod tests;
