//! The lock protocol above the stores: grant, re-entrance, takeover, renew, release, lost
//! replies and waiting. Everything here is store-agnostic; see docs/design.md, rules 1 to 8.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{local_wall_ms, ms};
use crate::error::{Error, Result};
use crate::record::{Action, Change, Event, EventKind, Record, SharedOp};
use crate::store::{Expect, Observed, State, Store, Write, Written};

mod holder;
mod many;
mod options;

pub use holder::taken_from;
pub use many::{MAX_LOCKS, sorted_locks};
pub(crate) use options::Wrote;
pub use options::{AcquireOptions, Grant, Holding, How, ProgressFn, ReleaseOptions, Released, RenewOptions, Ttl, Wait, WaitReport};

/// How long a record outlives its lease or release before DynamoDB's TTL may delete it.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Lock operations on one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Locker {
    store: Arc<dyn Store>,
}

pub(crate) fn random_hex<const BYTES: usize>() -> String {
    let bytes: [u8; BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How far this machine's clock may be off the store's before a write made on it (the
/// one-request path, before any `Date` was seen) is re-timed on the store clock.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// A lost-reply read-back is tried this many times before the store counts as unreachable.
const READ_BACK_TRIES: u32 = 3;
/// Decisions in a row without a pause (conflicts from racing writers) before we back off.
pub(crate) const EAGER_ROUNDS: u32 = 8;

impl Locker {
    /// A locker on `store`.
    pub fn new(store: Arc<dyn Store>) -> Locker {
        Locker { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The error for an unreadable record: exit 78, with the break-glass command.
    pub fn corrupt(&self, lock: &str, why: &str) -> Error {
        Error::Config(format!(
            "lock {lock:?} in {store} holds a record that cannot be read ({why}); it is never treated as free. \
             Look at it, then clear it with: pipeline-lock release --store {store} --lock '{lock}' --force --reason '...'",
            store = self.store.url()
        ))
    }

    pub(crate) fn change(&self, action: Action, lease: Option<Duration>, retention: Duration, event: Option<Event>) -> Change {
        let now = self.store.clock().now_ms();
        let lease_expires_at = lease.map(|l| now.saturating_add(ms(l)));
        let event = event.map(|e| Event { at: now, ..e });
        let gc_from = match action {
            Action::Release | Action::Shared(SharedOp::Release { .. }) => Some(now),
            _ => lease_expires_at,
        };
        Change {
            action,
            rvn: random_hex::<8>(),
            now,
            lease_expires_at,
            expires_at: gc_from.map(|t| t / 1000 + retention.as_secs() as i64),
            fence_floor: self.fence_floor(),
            event,
            slots: 1,
            evict: false,
            evicted: Vec::new(),
        }
    }

    /// Where a record created now starts its fence: the latest the store clock can read now
    /// (our estimate plus its uncertainty), plus the second by which another runner's clock
    /// may be off before its write is re-timed. Any grant made earlier got less.
    fn fence_floor(&self) -> u64 {
        let clock = self.store.clock();
        (clock.now_ms() + ms(clock.uncertainty()) + ms(CLOCK_SLACK)).max(0) as u64
    }

    /// One conditional write, surviving lost replies (docs/design.md, rule 6) and queue traffic.
    ///
    /// A holder's write made without a base (renew, release, retime) only cares about its
    /// Token (and Rvn), which waiter bookkeeping never changes. A whole-record store still
    /// refuses it when a waiter rewrote the record between its read and its write; the
    /// refusal then shows a record that meets the condition, and the write is made again on
    /// that record. Grants are left to the caller, who must decide again (the queue moved).
    pub(crate) async fn commit(&self, lock: &str, expect: Expect, base: Option<&Observed>, change: &Change) -> Result<Written> {
        let holder_write = matches!(expect, Expect::Owner(_) | Expect::Token(_) | Expect::TokenRvn { .. } | Expect::Rvn(_));
        let mut rebased: Option<Observed> = None;
        for round in 0..EAGER_ROUNDS {
            let written = self.commit_once(lock, expect.clone(), rebased.as_ref().or(base), change).await?;
            match written {
                Written::Conflict(obs) if base.is_none() && holder_write && expect.holds(&obs.state) && round + 1 < EAGER_ROUNDS => {
                    tracing::debug!("write to {lock:?} crossed a queue update; again on the new record");
                    rebased = Some(obs);
                }
                other => return Ok(other),
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under our write", self.store.url()),
            source: None,
        })
    }

    /// One conditional write; after no answer, the read-back of rule 6.
    async fn commit_once(&self, lock: &str, expect: Expect, base: Option<&Observed>, change: &Change) -> Result<Written> {
        let err = match self.store.write(Write { lock, expect, base, change }).await {
            Err(e @ Error::Unavailable { .. }) => e,
            other => return other,
        };
        tracing::debug!("write to {lock:?} got no answer ({err}); reading back");
        let mut last = err;
        for attempt in 0..READ_BACK_TRIES {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            match self.store.read(lock, true).await {
                Ok(obs) => {
                    return Ok(match &obs.state {
                        State::Valid(r) if r.rvn == change.rvn => Written::Done(r.clone()),
                        _ => Written::Conflict(obs),
                    });
                }
                Err(e @ Error::Unavailable { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// After a write made before the store's clock was known (the one-request fast path),
    /// rewrites the times if this machine's clock turned out to disagree with the store's.
    /// A grant that created its record from absent also gets its fence raised to the store
    /// ms: it started at this machine's ms, which may lie below an earlier fence of the lock.
    pub(crate) async fn retime(
        &self,
        lock: &str,
        record: Record,
        lease: Option<Duration>,
        retention: Duration,
        after: Wrote,
    ) -> Result<Option<Record>> {
        let restamp = after == Wrote::Grant;
        let now = self.store.clock().now_ms();
        let skew = (now - local_wall_ms()).abs();
        if skew <= ms(CLOCK_SLACK) {
            return Ok(Some(record));
        }
        tracing::info!("this machine's clock is {skew} ms off the store's; rewriting the lease times on the store clock");
        let token = record.token.clone().unwrap_or_default();
        let created = record.history.len() == 1 && record.history[0].event.is_grant();
        let floor = self.fence_floor() + 1;
        let raise_fence = (restamp && created && record.fence < floor).then_some(floor);
        let change = self.change(Action::Renew { restamp, raise_fence }, lease, retention, None);
        let expect = Expect::TokenRvn {
            token,
            rvn: record.rvn.clone(),
        };
        match self.commit(lock, expect, None, &change).await? {
            Written::Done(r) => Ok(Some(r)),
            // Taken over in between: the grant is gone; the caller goes back to waiting.
            Written::Conflict(_) => Ok(None),
        }
    }

    /// After a release made before the store's clock was known: a tombstone whose ExpiresAt
    /// came from a clock that is off would be garbage-collected early (or late), so it is
    /// rewritten on the store clock. Best effort: a grant in between wrote its own times.
    async fn retime_tombstone(&self, lock: &str, record: &Record, retention: Duration) -> Result<()> {
        let skew = (self.store.clock().now_ms() - local_wall_ms()).abs();
        if skew <= ms(CLOCK_SLACK) {
            return Ok(());
        }
        tracing::info!("this machine's clock is {skew} ms off the store's; rewriting the tombstone's ExpiresAt on the store clock");
        let change = self.change(Action::Release, None, retention, None);
        self.commit(lock, Expect::Rvn(record.rvn.clone()), None, &change).await.map(|_| ())
    }

    /// The grant `r` shows: the exclusive holder's, or with `token`, the shared hold of that
    /// token if there is one.
    pub(crate) fn grant(&self, lock: &str, r: &Record, token: Option<&str>, how: How, polls: u32) -> Grant {
        let hold = token.and_then(|t| r.holds().into_iter().find(|(_, h)| h.token == t));
        let (view, slot, shared) = match hold.and_then(|(k, _)| Some((r.view_of(k)?, k))) {
            Some((view, k)) => (view, k, true),
            None => (r.clone(), 1, false),
        };
        Grant {
            lock: lock.to_string(),
            store: self.store.url(),
            owner: view.owner.clone().unwrap_or_default(),
            token: view.token.clone().unwrap_or_default(),
            fence: view.fence,
            acquired_at: view.acquired_at.unwrap_or_default(),
            lease_expires_at: view.lease_expires_at,
            how,
            polls,
            waited_ms: 0,
            slot,
            slots: r.slot_count(),
            shared,
        }
    }

    /// The record of one lock, read consistently.
    pub async fn status(&self, lock: &str) -> Result<Observed> {
        self.store.read(lock, true).await
    }

    /// Every lock in the store.
    pub async fn list(&self) -> Result<Vec<(String, Observed)>> {
        self.store.list().await
    }
}

pub(crate) fn how_event(kind: EventKind, owner: &str, why: Option<String>) -> Option<Event> {
    Some(Event {
        event: kind,
        owner: owner.to_string(),
        fence: None,
        at: 0,
        by: None,
        why,
        from: None,
        waited: None,
    })
}

/// The lease a renewal writes: `Keep` reads it off the grant.
fn ttl_len(ttl: Ttl, grant: Option<&Record>, now: i64) -> Option<Duration> {
    match ttl {
        Ttl::For(d) => Some(d),
        Ttl::NoEnd => None,
        Ttl::Keep => grant.and_then(|r| crate::policy::kept_lease(r, now, None)),
    }
}

/// `base` scaled by a random factor in [0.75, 1.25): racing writers do not retry in lockstep.
pub(crate) fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}
