//! The engine of the whole-record stores (S3, file): each lock is one JSON object, read whole
//! and replaced whole under a compare-and-set on the store's opaque version of it (S3's ETag,
//! the file's bytes), in the spirit of object_store's `PutMode`. Everything about records
//! lives here once: parsing and the size cap, which record a write puts (docs/design.md,
//! rules 2, 5 and 8), waiter bookkeeping, and what a refused put means. A store supplies only
//! the object primitives of the crate-private trait `Objects` (get, conditional put, list);
//! a new object store is one implementation of it.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{Check, Expect, ListQuery, Observed, Page, State, Store, Version, WaiterUpdate, Write, Written};
use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::record::{Change, Record};

/// Largest record we read; anything bigger is not ours.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Rewrites a waiter update tries before leaving it to the next poll.
const WAITER_ROUNDS: u32 = 3;

/// One stored object: at most `MAX_RECORD_BYTES + 1` bytes of it, and its version.
#[derive(Debug, Clone)]
pub(crate) struct Object<T> {
    pub(crate) bytes: Vec<u8>,
    /// `None` when the store did not say (an S3-compatible store without ETags).
    pub(crate) tag: Option<T>,
}

/// The condition of a put.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PutMode<'a, T> {
    /// Only if there is no object.
    Create,
    /// Only if the object is still at this version.
    Update(&'a T),
}

impl<T: PartialEq> PutMode<'_, T> {
    /// Does the object there now (its version, `None` for no object) meet the condition? For
    /// the stores that check it themselves (file under its flock, memory under its mutex).
    pub(crate) fn holds(&self, current: Option<Option<&T>>) -> bool {
        match (self, current) {
            (PutMode::Create, None) => true,
            (PutMode::Update(tag), Some(Some(now))) => now == *tag,
            _ => false,
        }
    }
}

/// The answer to a put: a refusal is a value, not an error.
#[derive(Debug)]
pub(crate) enum PutOutcome<T> {
    /// Written; the new version when the store said it.
    Done(Option<T>),
    /// The object was not as the mode said. `Some(now)` when the store knows what is there
    /// without another request; `None`: read it.
    Refused(Option<Option<Object<T>>>),
}

/// A page of [`Objects::list_page`]: the objects with their lock names, and where to go on.
pub(crate) type ObjectPage<T> = (Vec<(String, Option<Object<T>>)>, Option<String>);

/// The object primitives of a whole-record store, one object per lock.
#[async_trait]
pub(crate) trait Objects: Send + Sync + Debug {
    /// The store's opaque version of an object, compared for equality only.
    type Tag: Clone + PartialEq + Debug + Send + Sync + 'static;

    /// Does [`Objects::edit`] read and put as one step that nobody can come between (the file
    /// store's flock)? Then every write and waiter update goes through it: a base is never
    /// worth trusting over what is there.
    const ONE_STEP: bool = false;

    /// The store's URL, for messages.
    fn url(&self) -> String;

    /// The store's clock.
    fn clock(&self) -> &StoreClock;

    /// Requests sent so far.
    fn requests(&self) -> u64;

    /// The lock's object, `None` when there is none.
    async fn get(&self, lock: &str) -> Result<Option<Object<Self::Tag>>>;

    /// Puts `body` as the lock's object if `mode` holds.
    async fn put(&self, lock: &str, body: Vec<u8>, mode: PutMode<'_, Self::Tag>) -> Result<PutOutcome<Self::Tag>>;

    /// Reads the object and puts what `decide` makes of it, conditionally on the object being
    /// unchanged. `decide` answers `Ok((body, value))` to put `body`, or `Err(kept)` to leave
    /// the object as it is; the value comes back with the put's outcome. This default is a
    /// get and a conditional put, so a writer in between makes the put `Refused`.
    async fn edit<F, R, K>(&self, lock: &str, decide: F) -> Result<std::result::Result<(PutOutcome<Self::Tag>, R), K>>
    where
        F: FnOnce(Option<&Object<Self::Tag>>) -> Result<std::result::Result<(Vec<u8>, R), K>> + Send,
        R: Send,
        K: Send,
    {
        let current = self.get(lock).await?;
        let (body, value) = match decide(current.as_ref())? {
            Ok(put) => put,
            Err(kept) => return Ok(Err(kept)),
        };
        let mode = match &current {
            None => PutMode::Create,
            Some(Object { tag: Some(tag), .. }) => PutMode::Update(tag),
            Some(Object { tag: None, .. }) => return Err(self.unversioned(lock)),
        };
        Ok(Ok((self.put(lock, body, mode).await?, value)))
    }

    /// One page of objects in key order, with their lock names: at most `limit` of those
    /// whose names start with `prefix` and whose keys come after `after`'s (a lock name); a
    /// store that reads each one may leave out those that vanished since the listing, or keep
    /// them as `None`. The second value is the name to continue after, `None` at the end.
    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage<Self::Tag>>;

    /// Operator checks for `doctor`; `store` is the engine on top of these primitives.
    async fn doctor(&self, store: &dyn Store) -> Vec<Check>;

    /// The error for an object read without a version: it cannot be changed conditionally.
    fn unversioned(&self, lock: &str) -> Error;
}

/// A [`Store`] over the object primitives `P`: the one implementation of the record logic
/// for S3 ([`super::s3::S3Store`]) and the file store ([`super::file::FileStore`]).
#[derive(Debug, Clone)]
pub struct Whole<P> {
    objects: P,
    /// Did the last waiter update meet a concurrent write? See `update_waiters`.
    waiter_contention: Arc<AtomicBool>,
}

impl<P> Whole<P> {
    pub(crate) fn new(objects: P) -> Whole<P> {
        Whole {
            objects,
            waiter_contention: Arc::default(),
        }
    }

    /// The object primitives underneath (raw writes: `MemoryStore::plant`, the negative control).
    pub(crate) fn objects(&self) -> &P {
        &self.objects
    }
}

/// How a round of a waiter update ended.
enum Round {
    /// With this answer.
    Over(Option<Observed>),
    /// Refused: again, over this record if the store said what is there, else on a fresh read.
    Again(Option<Observed>),
}

/// Parses a stored JSON record (the same bytes in every whole-record store).
pub(crate) fn parse(lock: &str, bytes: &[u8]) -> State {
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return State::Corrupt(format!("the record is larger than {MAX_RECORD_BYTES} bytes"));
    }
    match serde_path_to_error::deserialize::<_, Record>(&mut serde_json::Deserializer::from_slice(bytes)) {
        Ok(mut r) => match r.validate(lock) {
            Ok(()) => {
                r.fill_history_fences();
                State::Valid(r)
            }
            Err(why) => State::Corrupt(why),
        },
        Err(e) => State::Corrupt(format!("not a lock record: {}", super::at_path(&e))),
    }
}

/// The fence of a record we cannot parse, when its JSON still carries one.
fn salvage_fence(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?.get("Fence")?.as_u64()
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(record).map_err(|e| Error::other("cannot encode the lock record", e))
}

fn observed<T: Clone + Debug + Send + Sync + 'static>(lock: &str, object: Option<&Object<T>>) -> Observed {
    match object {
        None => Observed {
            state: State::Absent,
            version: Version::default(),
        },
        Some(o) => Observed {
            state: parse(lock, &o.bytes),
            version: o.tag.clone().map(Version::of).unwrap_or_default(),
        },
    }
}

/// Is `current` still the object `base` was read from? Without a version nobody can tell.
fn unchanged<T: PartialEq + 'static>(base: &Observed, current: Option<&Object<T>>) -> bool {
    match current {
        None => matches!(base.state, State::Absent),
        Some(o) => o.tag.is_some() && o.tag.as_ref() == base.version.get::<T>(),
    }
}

/// The record a write puts over `state` (docs/design.md, rules 2, 5 and 8). `bytes` are the
/// raw object, where only they can still hold a corrupt record's fence.
fn next_record(w: &Write<'_>, state: &State, bytes: Option<&[u8]>) -> Record {
    match (&w.expect, state) {
        (_, State::Valid(r)) => r.apply(w.change),
        (Expect::Exact, _) => super::salvage(w.lock, bytes.and_then(salvage_fence), w.change),
        _ => Record::created(w.lock, w.change),
    }
}

// The helpers are private; only the engine itself ever names the bound.
#[expect(private_bounds, reason = "private helpers of the public Store impl")]
impl<P: Objects> Whole<P> {
    /// After a refused put: what is there now. Our own record there means the write landed
    /// after all (S3 may answer 412 to the SDK's retry of a write whose first reply was lost).
    async fn after_refusal(&self, lock: &str, change: &Change) -> Result<Written> {
        let now = self.read(lock, true).await?;
        Ok(match &now.state {
            State::Valid(r) if r.rvn == change.rvn => Written::Done(r.clone()),
            _ => Written::Conflict(now),
        })
    }

    async fn settle(&self, w: &Write<'_>, outcome: PutOutcome<P::Tag>, next: Record) -> Result<Written> {
        match outcome {
            PutOutcome::Done(_) => Ok(Written::Done(next)),
            PutOutcome::Refused(Some(now)) => Ok(Written::Conflict(observed(w.lock, now.as_ref()))),
            PutOutcome::Refused(None) => self.after_refusal(w.lock, w.change).await,
        }
    }

    /// A write over a base that is trusted to be current: one conditional put.
    async fn put_over(&self, w: &Write<'_>, base: &Observed) -> Result<Written> {
        if !w.admits(&base.state) {
            return Ok(Written::Conflict(base.clone()));
        }
        let next = next_record(w, &base.state, None);
        let mode = match (&base.state, base.version.get::<P::Tag>()) {
            (State::Absent, _) => PutMode::Create,
            (_, Some(tag)) => PutMode::Update(tag),
            (_, None) => return Err(self.objects.unversioned(w.lock)),
        };
        let outcome = self.objects.put(w.lock, encode(&next)?, mode).await?;
        self.settle(w, outcome, next).await
    }

    /// A write decided on what is there now (which must still be `w.base`, if it has one).
    async fn edit_current(&self, w: &Write<'_>) -> Result<Written> {
        let edited = self
            .objects
            .edit(w.lock, |current| {
                let now = observed(w.lock, current);
                if w.base.is_some_and(|b| !unchanged(b, current)) || !w.admits(&now.state) {
                    return Ok(Err(now));
                }
                let next = next_record(w, &now.state, current.map(|o| o.bytes.as_slice()));
                Ok(Ok((encode(&next)?, next)))
            })
            .await?;
        match edited {
            Ok((outcome, next)) => self.settle(w, outcome, next).await,
            Err(now) => Ok(Written::Conflict(now)),
        }
    }

    /// One round of a waiter update over `base`, trusted to be current.
    async fn waiters_over(&self, u: &WaiterUpdate<'_>, base: Observed) -> Result<Round> {
        let (State::Valid(record), Some(tag)) = (&base.state, base.version.get::<P::Tag>()) else {
            return Ok(Round::Over(Some(base)));
        };
        let next = record.with_waiters(u.set, u.remove, u.prune);
        if next.waiters == record.waiters {
            return Ok(Round::Over(Some(base)));
        }
        let outcome = self.objects.put(u.lock, encode(&next)?, PutMode::Update(tag)).await?;
        Ok(self.waiters_done(u.lock, outcome, next))
    }

    /// One round of a waiter update on what is there now.
    async fn waiters_now(&self, u: &WaiterUpdate<'_>) -> Result<Round> {
        let edited = self
            .objects
            .edit(u.lock, |current| {
                let now = observed(u.lock, current);
                let (State::Valid(record), Some(_)) = (&now.state, current.and_then(|o| o.tag.as_ref())) else {
                    return Ok(Err(now));
                };
                let next = record.with_waiters(u.set, u.remove, u.prune);
                if next.waiters == record.waiters {
                    return Ok(Err(now));
                }
                Ok(Ok((encode(&next)?, next)))
            })
            .await?;
        Ok(match edited {
            Ok((outcome, next)) => self.waiters_done(u.lock, outcome, next),
            Err(now) => Round::Over(Some(now)),
        })
    }

    fn waiters_done(&self, lock: &str, outcome: PutOutcome<P::Tag>, next: Record) -> Round {
        match outcome {
            // Without the new version the record cannot be a base for the next write: read.
            PutOutcome::Done(tag) => Round::Over(tag.map(|t| Observed {
                state: State::Valid(next),
                version: Version::of(t),
            })),
            PutOutcome::Refused(now) => {
                self.waiter_contention.store(true, Ordering::Relaxed);
                Round::Again(now.map(|o| observed(lock, o.as_ref())))
            }
        }
    }
}

#[async_trait]
impl<P: Objects> Store for Whole<P> {
    fn url(&self) -> String {
        self.objects.url()
    }

    fn clock(&self) -> &StoreClock {
        self.objects.clock()
    }

    fn requests(&self) -> u64 {
        self.objects.requests()
    }

    async fn read(&self, lock: &str, _consistent: bool) -> Result<Observed> {
        // Both stores read strongly consistently: S3 since December 2020, a file always.
        Ok(observed(lock, self.objects.get(lock).await?.as_ref()))
    }

    async fn write(&self, w: Write<'_>) -> Result<Written> {
        // Exact is about the record in `base`: without one it would replace whatever is there
        // now, unseen. DynamoDB refuses it the same way (`put_exact`).
        if w.expect == Expect::Exact && w.base.is_none() {
            return Err(Error::Usage("a break-glass write needs the record it replaces".into()));
        }
        // Break-glass over a corrupt record reads it again: only the raw bytes hold the old
        // fence, and only if they are still the bytes the decision was made on.
        let rereads = |b: &Observed| P::ONE_STEP || (w.expect == Expect::Exact && matches!(b.state, State::Corrupt(_)));
        match w.base {
            Some(base) if !rereads(base) => self.put_over(&w, base).await,
            _ => self.edit_current(&w).await,
        }
    }

    async fn update_waiters(&self, u: WaiterUpdate<'_>) -> Result<Option<Observed>> {
        // The base is the waiter's last poll, up to a retry interval old. Writing over it
        // replaces this round's poll when nobody else wrote since; in a busy queue (our last
        // update met a concurrent write) it is likely stale, and a fresh read first costs one
        // request where a refused write costs two.
        let busy = self.waiter_contention.swap(false, Ordering::Relaxed);
        let mut base = u.base.filter(|_| !busy && !P::ONE_STEP).cloned();
        // Waiters race each other (and the holder) for the one object: each refusal means the
        // record changed, so rewrite over what is there now. A few rounds, then let the next
        // poll try again; bookkeeping is never worth an error.
        for _ in 0..WAITER_ROUNDS {
            let round = match base.take() {
                Some(b) => self.waiters_over(&u, b).await?,
                None => self.waiters_now(&u).await?,
            };
            match round {
                Round::Over(answer) => return Ok(answer),
                Round::Again(now) => base = now,
            }
        }
        match base {
            Some(b) => Ok(Some(b)),
            None => self.read(u.lock, true).await.map(Some),
        }
    }

    async fn list_page(&self, q: &ListQuery<'_>) -> Result<Page> {
        let (objects, next) = self.objects.list_page(q.prefix, q.after, q.limit.max(1)).await?;
        let items = (objects.into_iter())
            .filter_map(|(name, object)| {
                let seen = observed(&name, Some(&object?));
                Some((name, seen))
            })
            .collect();
        Ok(Page { items, next })
    }

    async fn doctor(&self) -> Vec<Check> {
        self.objects.doctor(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_or_foreign_object_is_corrupt_and_keeps_a_readable_fence() {
        let big = vec![b' '; MAX_RECORD_BYTES as usize + 1];
        assert!(matches!(parse("l", &big), State::Corrupt(why) if why.contains("larger")));
        assert!(matches!(parse("l", b"{\"Fence\":7}"), State::Corrupt(_)));
        assert_eq!(salvage_fence(b"{\"Fence\":7,\"LockID\":3}"), Some(7));
        assert_eq!(salvage_fence(b"not json"), None);
    }
}
