//! State beside the lock in the whole-object stores (S3, file): one JSON object per key, in
//! a key space of its own that no lock object can have (S3: `PREFIX/.pipeline-lock-state/`,
//! file: the directory `.pipeline-lock-state/`), so `list` never shows one. A write reads the
//! object, decides on it ([`crate::state::refusal`], [`crate::state::next_entry`]) and puts
//! the result only if the object is still the one read: S3's `If-None-Match: *` /
//! `If-Match: ETAG`, the file store's compare of the bytes under its `flock`. A refused put
//! is decided again on what is there now, so a write is never judged on a stale read.

use async_trait::async_trait;

use super::whole::{Object, Objects, PutMode, PutOutcome, Whole};
use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::state::{Entry, StateStore, StateWrite, StateWritten, WRITE_ROUNDS, next_entry, refusal};

/// The directory (file store) or key segment (S3) that state objects live under. It starts
/// with a dot and has no lock-file suffix, so neither store's listing takes it for a lock.
pub(crate) const STATE_DIR: &str = ".pipeline-lock-state";

/// The suffix of a state object.
pub(crate) const STATE_SUFFIX: &str = ".json";

/// The object primitives of state, beside a store's lock objects.
#[async_trait]
pub(crate) trait StateObjects: Objects {
    /// The key's object, `None` when there is none.
    async fn get_state(&self, key: &str) -> Result<Option<Object<Self::Tag>>>;

    /// Puts `body` as the key's object if `mode` holds.
    async fn put_state(&self, key: &str, body: Vec<u8>, mode: PutMode<'_, Self::Tag>) -> Result<PutOutcome<Self::Tag>>;

    /// Where the key's object lives, for messages.
    fn state_location(&self, key: &str) -> String;
}

/// Parses a stored entry; an object that is not one is an error naming it and the fix
/// (never taken as absent: a stale holder could then write over a newer value).
fn parse<P: StateObjects>(p: &P, key: &str, bytes: &[u8]) -> Result<Entry> {
    let entry: Entry = serde_json::from_slice(bytes).map_err(|e| {
        Error::Config(format!(
            "{}: state {key:?} ({}) is not a state entry ({e}); look at it, then remove it by hand to start the key again",
            p.url(),
            p.state_location(key)
        ))
    })?;
    if entry.key != key {
        return Err(Error::Config(format!(
            "{}: {} holds the state of {:?}, not of {key:?}; another tool writes there",
            p.url(),
            p.state_location(key),
            entry.key
        )));
    }
    Ok(entry)
}

#[async_trait]
impl<P: StateObjects> StateStore for Whole<P> {
    fn url(&self) -> String {
        self.objects().url()
    }

    fn requests(&self) -> u64 {
        self.objects().requests()
    }

    fn clock(&self) -> &StoreClock {
        self.objects().clock()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let p = self.objects();
        match p.get_state(key).await? {
            None => Ok(None),
            Some(o) => parse(p, key, &o.bytes).map(Some),
        }
    }

    async fn write(&self, w: &StateWrite) -> Result<StateWritten> {
        let p = self.objects();
        let mut known: Option<Option<Object<P::Tag>>> = None;
        let mut ours: Option<Entry> = None;
        for _ in 0..WRITE_ROUNDS {
            let current = match known.take() {
                Some(now) => now,
                None => p.get_state(&w.key).await?,
            };
            let entry = current.as_ref().map(|o| parse(p, &w.key, &o.bytes)).transpose()?;
            // Our own entry there: the put landed and a retry of it was refused (S3 answers
            // 412 to the SDK's retry of a put whose first reply was lost).
            if let (Some(mine), Some(there)) = (&ours, &entry)
                && mine == there
            {
                return Ok(StateWritten::Done(there.clone()));
            }
            if let Some(why) = refusal(w, entry.as_ref()) {
                return Ok(StateWritten::Refused(why, entry));
            }
            let next = next_entry(w, entry.as_ref(), p.clock().now_ms());
            let body = serde_json::to_vec_pretty(&next).map_err(|e| Error::other("cannot encode the state entry", e))?;
            let mode = match &current {
                None => PutMode::Create,
                Some(Object { tag: Some(tag), .. }) => PutMode::Update(tag),
                Some(Object { tag: None, .. }) => return Err(p.unversioned(&w.key)),
            };
            match p.put_state(&w.key, body, mode).await? {
                PutOutcome::Done(_) => return Ok(StateWritten::Done(next)),
                // Someone wrote in between: decide again on what is there now.
                PutOutcome::Refused(now) => {
                    known = now;
                    ours = Some(next);
                }
            }
        }
        Err(Error::Unavailable {
            message: format!(
                "{}: state {:?} kept changing under {WRITE_ROUNDS} tries to write it; try again",
                p.url(),
                w.key
            ),
            source: None,
        })
    }
}
