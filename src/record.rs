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
    /// How many holders the lock admits (`--slots N`), fixed when the record is created;
    /// absent means 1, as in every record of the single-holder version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// The shared holds (`--shared`), by slot number ("1" to "N"). Never beside an exclusive
    /// holder (the fields above): one kind of hold at a time (docs/design.md, "Pools and shared locks (v2)").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared: BTreeMap<String, Hold>,
    /// The last events, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Event>,
}

/// One shared hold: the holder fields of an exclusive grant, in its own slot, with its own
/// Token, lease, fence and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Hold {
    /// Who holds the slot.
    pub owner: String,
    /// Random per grant.
    pub token: String,
    /// This grant's fence (the lock's fence counter when it was granted).
    pub fence: u64,
    /// This hold's version: the record's Rvn of the hold's last own write.
    pub rvn: String,
    /// When it was granted.
    pub acquired_at: i64,
    /// Its last grant or renewal.
    pub renewed_at: i64,
    /// End of its lease; absent with `--disable-ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    /// Who it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
}

/// The most slots a lock may have: with owner and reason at their 1024-byte limits a hold is
/// about 2.5 KB, so 64 of them plus a full queue and History stay well inside DynamoDB's
/// 400 KB item (docs/design.md, "Pools and shared locks (v2)").
pub const MAX_SLOTS: u32 = 64;

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
    /// A shared request (`--shared`); absent: exclusive. A waiting exclusive request holds
    /// back shared ones queued after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
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
    /// For grants after a wait: how long the new holder waited, in ms (the timeline's waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited: Option<u64>,
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
    /// A write to one shared hold.
    Shared(SharedOp),
}

/// What a write to one shared hold does.
#[derive(Debug, Clone, PartialEq)]
// As `Action`: a handful per command, by value.
#[allow(clippy::large_enum_variant)]
pub enum SharedOp {
    /// A shared grant of `slot` to a new token: the slot was free, or held by a stale holder
    /// it replaces. Fence +1.
    Grant {
        /// The slot, 1 to N.
        slot: u32,
        /// The new holder.
        grantee: Grantee,
    },
    /// The hold in `slot` extends its lease (also a re-entrant shared acquire).
    Renew {
        /// The slot.
        slot: u32,
    },
    /// The hold in `slot` is given back.
    Release {
        /// The slot.
        slot: u32,
    },
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
    /// The lock's N as this write assumes it: a grant is refused where the record says
    /// otherwise, and a record this write creates stores it.
    pub slots: u32,
    /// A grant that replaces every current holder (all judged stale, or `--force`): the
    /// other kind of hold cannot stay beside it.
    pub evict: bool,
    /// With `evict`: a `released` event (by the taker) for each evicted holder the grant's own
    /// event does not name, logged before it, so each one's later `release`/`renew` learns it
    /// was taken over (exit 76) rather than finding "held by another".
    pub evicted: Vec<Event>,
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
            slots: None,
            shared: BTreeMap::new(),
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

    /// Is the lock free (a tombstone: no holder of either kind)?
    pub fn is_free(&self) -> bool {
        self.owner.is_none() && self.shared.is_empty()
    }

    /// How many holders it admits.
    pub fn slot_count(&self) -> u32 {
        self.slots.unwrap_or(1)
    }

    /// The shared hold in `slot`.
    pub fn hold(&self, slot: u32) -> Option<&Hold> {
        self.shared.get(&slot.to_string())
    }

    /// The shared holds with their slot numbers, lowest first.
    pub fn holds(&self) -> Vec<(u32, &Hold)> {
        let mut holds: Vec<(u32, &Hold)> = self.shared.iter().filter_map(|(k, h)| Some((k.parse().ok()?, h))).collect();
        holds.sort_by_key(|(k, _)| *k);
        holds
    }

    /// Who holds it, for messages: `alice (fence 3)`, or the shared holders with their slots.
    pub fn holders_text(&self) -> String {
        if let Some(owner) = &self.owner {
            return format!("{owner} (fence {})", self.fence);
        }
        let holds: Vec<String> = self
            .holds()
            .iter()
            .map(|(k, h)| format!("{} (slot {k}, fence {})", h.owner, h.fence))
            .collect();
        format!("{} shared holder(s) of {}: {}", holds.len(), self.slot_count(), holds.join(", "))
    }

    /// The lowest slot no shared hold is in.
    pub fn free_slot(&self) -> Option<u32> {
        (1..=self.slot_count()).find(|k| self.hold(*k).is_none())
    }

    /// The record as the takeover rules see the holder of `slot`: its owner, token, times and
    /// details in the exclusive holder's fields.
    pub fn view_of(&self, slot: u32) -> Option<Record> {
        let h = self.hold(slot)?;
        let mut view = Record::vacant(&self.lock_id);
        view.owner = Some(h.owner.clone());
        view.token = Some(h.token.clone());
        view.fence = h.fence;
        view.rvn = h.rvn.clone();
        view.acquired_at = Some(h.acquired_at);
        view.renewed_at = Some(h.renewed_at);
        view.lease_expires_at = h.lease_expires_at;
        view.holder = h.holder.clone();
        view.history = self.history.clone();
        Some(view)
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
        let n = self.slot_count();
        if n == 0 || n > MAX_SLOTS {
            return Err(format!("Slots is {n}; it must be 1 to {MAX_SLOTS}"));
        }
        if self.owner.is_some() && !self.shared.is_empty() {
            return Err("the record has an exclusive Owner and Shared holds at once".into());
        }
        for key in self.shared.keys() {
            if !key.parse::<u32>().is_ok_and(|k| (1..=n).contains(&k)) {
                return Err(format!("Shared has slot {key:?}; the slots are 1 to {n}"));
            }
        }
        Ok(())
    }

    /// The record after `change`, for stores that rewrite whole records (S3, file).
    /// DynamoDB expresses the same change as an update expression.
    pub fn apply(&self, change: &Change) -> Record {
        let mut next = self.clone();
        next.rvn = change.rvn.clone();
        if next.slots.is_none() && change.slots > 1 {
            next.slots = Some(change.slots);
        }
        if change.evict {
            next.owner = None;
            next.token = None;
            next.acquired_at = None;
            next.renewed_at = None;
            next.lease_expires_at = None;
            next.holder = None;
            next.shared.clear();
        }
        if let Action::Shared(op) = &change.action {
            next.apply_shared(op, change);
        } else {
            next.expires_at = change.expires_at;
            next.lease_expires_at = change.lease_expires_at;
        }
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
            Action::Shared(_) => {}
        }
        for event in change.evicted.iter().chain(&change.event) {
            next.history.push(Event {
                fence: Some(next.fence),
                ..event.clone()
            });
        }
        let excess = next.history.len().saturating_sub(HISTORY_LEN);
        next.history.drain(..excess);
        next
    }

    /// A write to one shared hold.
    fn apply_shared(&mut self, op: &SharedOp, change: &Change) {
        let slot = |k: &u32| k.to_string();
        match op {
            SharedOp::Grant { slot: k, grantee } => {
                self.fence += 1;
                self.shared.insert(
                    slot(k),
                    Hold {
                        owner: grantee.owner.clone(),
                        token: grantee.token.clone(),
                        fence: self.fence,
                        rvn: change.rvn.clone(),
                        acquired_at: change.now,
                        renewed_at: change.now,
                        lease_expires_at: change.lease_expires_at,
                        holder: Some(grantee.holder.clone()),
                    },
                );
                for token in &grantee.dequeue {
                    self.waiters.remove(token);
                }
            }
            SharedOp::Renew { slot: k } => {
                if let Some(h) = self.shared.get_mut(&slot(k)) {
                    h.renewed_at = change.now;
                    h.lease_expires_at = change.lease_expires_at;
                    h.rvn = change.rvn.clone();
                }
            }
            SharedOp::Release { slot: k } => {
                self.shared.remove(&slot(k));
            }
        }
        // No hold may outlive the record: GC waits for the latest lease end among the holds
        // plus the retention this write uses, and never comes while a hold has no lease end.
        self.expires_at = change.expires_at.and_then(|gc| {
            let retention = gc - change.lease_expires_at.unwrap_or(change.now) / 1000;
            self.shared
                .values()
                .try_fold(gc, |at, h| Some(at.max(h.lease_expires_at? / 1000 + retention)))
        });
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
