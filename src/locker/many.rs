//! Several locks at once (`--lock A --lock B`): all or none
//! (docs/design.md, "Several locks at once (v2)").
//!
//! Deadlock needs a holder that waits while it holds. A multi-lock request never does: it
//! only ever *waits* for one lock while holding nothing it took in this call, and tries the
//! others without waiting, giving back what it took when one is busy. Each lock's grant is
//! still the single-lock protocol (its own conditional write, queue, takeover rules and
//! fence), so every rule of a single lock holds for each lock of the set. Where the store
//! writes several items atomically (DynamoDB's TransactWriteItems), a request that finds
//! them all free takes them in one transaction.

use tokio::time::Instant;

use super::{AcquireOptions, Grant, Holding, How, Locker, ReleaseOptions, Wait, Wrote, how_event, random_hex};
use crate::ci::Identity;
use crate::error::{Error, Result};
use crate::record::{Action, EventKind, Grantee, Record};
use crate::store::{Expect, State, Write, WrittenAll};

/// The most locks one request may name: what one DynamoDB transaction holds, on every store,
/// so that a list that works on one store works on the others.
pub const MAX_LOCKS: usize = crate::store::dynamo::MAX_ITEMS;

/// The locks of a request in the order they are taken (sorted by name), with duplicates and
/// too long a list refused (a usage error, before any request).
pub fn sorted_locks(locks: &[String]) -> Result<Vec<String>> {
    if locks.len() > MAX_LOCKS {
        return Err(Error::Usage(format!(
            "{} locks given; one request takes at most {MAX_LOCKS} (what one DynamoDB transaction holds)",
            locks.len()
        )));
    }
    let mut sorted = locks.to_vec();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Usage(format!("lock {:?} is named twice; name each lock once", w[0])));
    }
    Ok(sorted)
}

impl Locker {
    /// Takes every lock in `locks` for `who`, all or none, waiting as `opts` says; the grants
    /// in sorted name order. Locks this owner already held are re-entered, and stay held when
    /// the request fails (they were not taken by it). `--max-retries` counts per wait.
    pub async fn acquire_all(&self, locks: &[String], who: &Identity, opts: &AcquireOptions) -> Result<Vec<Grant>> {
        let sorted = sorted_locks(locks)?;
        if let [one] = sorted.as_slice() {
            return Ok(vec![self.acquire(one, who, opts).await?]);
        }
        let started = Instant::now();
        if let Some(grants) = self.grant_all_at_once(&sorted, who, opts, started).await? {
            return Ok(grants);
        }
        let mut taken: Vec<Grant> = Vec::new();
        loop {
            let busy = match self.try_each(&sorted, who, opts, &mut taken).await {
                Ok(None) => {
                    taken.sort_by(|a, b| a.lock.cmp(&b.lock));
                    let waited = started.elapsed().as_millis() as u64;
                    return Ok(taken.into_iter().map(|g| Grant { waited_ms: waited, ..g }).collect());
                }
                Ok(Some(busy)) => busy,
                Err(e) => {
                    self.give_back(&mut taken).await;
                    return Err(e);
                }
            };
            self.give_back(&mut taken).await;
            let (lock, held) = busy;
            let wait = match opts.wait {
                Wait::No => return Err(held),
                Wait::Forever => Wait::Forever,
                Wait::For(d) => match d.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => Wait::For(left),
                    _ => {
                        return Err(Error::TimedOut(format!(
                            "gave up waiting for locks {} in {} after {}: {}; raise --wait, or set --force-after to take over stale locks",
                            sorted.join(", "),
                            self.store.url(),
                            humantime::format_duration(std::time::Duration::from_secs(started.elapsed().as_secs())),
                            held
                        )));
                    }
                },
            };
            // Wait in that lock's queue holding nothing of this request's, then try the rest.
            tracing::info!("lock {lock:?} is busy; waiting for it before trying the others again");
            let grant = self.acquire(&lock, who, &AcquireOptions { wait, ..opts.clone() }).await?;
            taken.push(grant);
        }
    }

    /// Tries each lock not yet in `taken`, in sorted order, without waiting. `Some` names the
    /// first busy lock (with its `Held` error); every other error ends the request.
    async fn try_each(&self, sorted: &[String], who: &Identity, opts: &AcquireOptions, taken: &mut Vec<Grant>) -> Result<Option<(String, Error)>> {
        let no_wait = AcquireOptions {
            wait: Wait::No,
            progress: None,
            ..opts.clone()
        };
        for lock in sorted {
            if taken.iter().any(|g| &g.lock == lock) {
                continue;
            }
            match self.acquire(lock, who, &no_wait).await {
                Ok(grant) => taken.push(grant),
                Err(e @ Error::Held { .. }) => return Ok(Some((lock.clone(), e))),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Gives back the grants this request made (not those it re-entered: an earlier job
    /// holds those). A failed release is left to the lease's end, with a warning.
    async fn give_back(&self, taken: &mut Vec<Grant>) {
        for g in taken.drain(..).rev().filter(|g| g.how != How::Reentered) {
            if let Err(e) = self.release(&g.lock, &Holding::grant(&g), &ReleaseOptions::default()).await {
                tracing::warn!(
                    "giving back lock {:?} failed: {}; it frees itself when its lease ends",
                    g.lock,
                    crate::report::chain(&e)
                );
            }
        }
    }

    /// Every lock in one atomic write, where the store has one and the request is a plain
    /// exclusive one: blind grants from free, as a single lock's first try is. `None` when
    /// that did not work out (held, queued, no such write): the caller goes one by one.
    async fn grant_all_at_once(&self, sorted: &[String], who: &Identity, opts: &AcquireOptions, started: Instant) -> Result<Option<Vec<Grant>>> {
        if opts.shared || opts.force.is_some() {
            return Ok(None);
        }
        let holder = crate::acquire::holder_of(who, opts);
        let synced = self.store.clock().is_synced();
        let changes: Vec<_> = sorted
            .iter()
            .map(|_| {
                let grantee = Grantee {
                    owner: who.owner.clone(),
                    token: random_hex::<16>(),
                    holder: holder.clone(),
                    dequeue: Vec::new(),
                };
                let mut change = self.change(
                    Action::Grant(grantee),
                    opts.ttl,
                    opts.retention,
                    how_event(EventKind::Acquired, &who.owner, None),
                );
                change.slots = opts.slots;
                change
            })
            .collect();
        let writes: Vec<Write<'_>> = sorted
            .iter()
            .zip(&changes)
            .map(|(lock, change)| Write {
                lock,
                expect: Expect::Vacant,
                base: None,
                change,
            })
            .collect();
        let records = match self.store.write_all(&writes).await {
            Ok(Some(WrittenAll::Done(records))) => records,
            Ok(None | Some(WrittenAll::Conflict(_))) => return Ok(None),
            Err(e @ Error::Unavailable { .. }) => {
                // No answer: the transaction landed whole or not at all. Rule 6's read-back
                // tells which; what landed and is still ours is given back before going on.
                tracing::debug!("the transaction over {} got no answer ({e}); reading back", sorted.join(", "));
                let mut ours = Vec::new();
                for (lock, change) in sorted.iter().zip(&changes) {
                    match self.store.read(lock, true).await?.state {
                        State::Valid(r) if r.rvn == change.rvn => ours.push(r),
                        _ => {}
                    }
                }
                if ours.len() < sorted.len() {
                    let mut landed: Vec<Grant> = ours
                        .iter()
                        .map(|r| self.grant(&r.lock_id, r, r.token.as_deref(), How::Acquired, 0))
                        .collect();
                    self.give_back(&mut landed).await;
                    return Ok(None);
                }
                ours
            }
            Err(e) => return Err(e),
        };
        let mut grants: Vec<Grant> = Vec::with_capacity(records.len());
        for (lock, record) in sorted.iter().zip(records) {
            let record: Option<Record> = match synced {
                true => Some(record),
                // Written on this machine's clock before the store's was known (as a single
                // lock's first try): re-timed on the store clock if the two disagree.
                false => self.retime(lock, record, opts.ttl, opts.retention, Wrote::Grant).await?,
            };
            let Some(record) = record else {
                self.give_back(&mut grants).await;
                return Ok(None);
            };
            let mut grant = self.grant(lock, &record, record.token.as_deref(), How::Acquired, 0);
            grant.waited_ms = started.elapsed().as_millis() as u64;
            grants.push(grant);
        }
        Ok(Some(grants))
    }
}
