//! The in-memory store: locks in this process's memory, for tests and for library users that
//! coordinate the tasks of one process. The record logic is the whole-record engine's
//! ([`super::whole`]), as for S3 and the file store; this file holds only its object
//! primitives: a map from lock name to the record's bytes and a version number. Its clock
//! follows tokio's ([`StoreClock::starting_at`]), so under a paused clock leases end, queue entries
//! go stale and waits run out in virtual time, in milliseconds of real time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::whole::{Object, ObjectPage, Objects, PutMode, PutOutcome, Whole};
use super::{Check, Outcome, Store};
use crate::clock::StoreClock;
use crate::error::{Error, Result};

/// Locks in this process's memory.
pub type MemoryStore = Whole<Memory>;

/// The in-memory store's object primitives.
#[derive(Debug)]
pub struct Memory {
    id: u64,
    /// Lock name -> (bytes, version).
    objects: Mutex<HashMap<String, (Vec<u8>, u64)>>,
    versions: AtomicU64,
    clock: StoreClock,
    requests: AtomicU64,
}

/// Tells stores apart in messages.
static STORES: AtomicU64 = AtomicU64::new(1);

impl Whole<Memory> {
    /// An empty store. Its clock starts at this machine's wall time and moves with tokio's.
    pub fn in_memory() -> MemoryStore {
        Whole::new(Memory {
            id: STORES.fetch_add(1, Ordering::Relaxed),
            objects: Mutex::default(),
            versions: AtomicU64::new(1),
            clock: StoreClock::starting_at(crate::clock::local_wall_ms()),
            requests: AtomicU64::new(0),
        })
    }
}

impl Whole<Memory> {
    /// Puts `bytes` where `lock`'s record lives, as they are: no condition, no parsing. What a
    /// foreign writer or a damaged store leaves behind, for tests of corrupt records (on the
    /// other stores tests plant theirs with a file write or the vendor's SDK). Not part of the
    /// [`Store`] trait, whose every write is conditional (docs/design.md, rule 1).
    pub fn plant(&self, lock: &str, bytes: Vec<u8>) {
        let memory = self.objects();
        let version = memory.versions.fetch_add(1, Ordering::Relaxed);
        memory.map().insert(lock.to_string(), (bytes, version));
    }
}

impl Memory {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, u64)>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        // The map is never left half-changed, so a panic elsewhere does not spoil it.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn object((bytes, version): &(Vec<u8>, u64)) -> Object<u64> {
    Object {
        bytes: bytes.clone(),
        tag: Some(*version),
    }
}

#[async_trait]
impl Objects for Memory {
    type Tag = u64;

    fn url(&self) -> String {
        format!("memory://{}", self.id)
    }

    fn clock(&self) -> &StoreClock {
        &self.clock
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    async fn get(&self, lock: &str) -> Result<Option<Object<u64>>> {
        Ok(self.map().get(lock).map(object))
    }

    async fn put(&self, lock: &str, body: Vec<u8>, mode: PutMode<'_, u64>) -> Result<PutOutcome<u64>> {
        let mut map = self.map();
        let current = map.get(lock);
        if !mode.holds(current.map(|(_, v)| Some(v))) {
            return Ok(PutOutcome::Refused(Some(current.map(object))));
        }
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        map.insert(lock.to_string(), (body, version));
        Ok(PutOutcome::Done(Some(version)))
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage<u64>> {
        let map = self.map();
        let mut names: Vec<&String> = (map.keys())
            .filter(|n| n.starts_with(prefix) && after.is_none_or(|a| n.as_str() > a))
            .collect();
        names.sort();
        let more = names.len() > limit;
        names.truncate(limit);
        let next = if more { names.last().map(|n| n.to_string()) } else { None };
        Ok((names.into_iter().map(|n| (n.clone(), Some(object(&map[n])))).collect(), next))
    }

    async fn doctor(&self, _store: &dyn Store) -> Vec<Check> {
        vec![Check::new(
            "memory",
            Outcome::Pass,
            "locks in this process's memory: conditional puts on a version number under one mutex",
        )]
    }

    fn unversioned(&self, lock: &str) -> Error {
        // Every object has a version here, so this is never met.
        Error::Config(format!("{}: lock {lock:?} has no version", self.url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Expect, State, Write, Written};

    #[tokio::test]
    async fn a_write_on_a_stale_read_is_refused() {
        let store = MemoryStore::in_memory();
        let change = crate::record::Change {
            action: crate::record::Action::Release,
            rvn: "r1".into(),
            now: store.clock().now_ms(),
            lease_expires_at: None,
            expires_at: None,
            fence_floor: 1,
            event: None,
            slots: 1,
            evict: false,
            evicted: Vec::new(),
        };
        let stale = store.read("l", true).await.unwrap();
        assert!(matches!(stale.state, State::Absent));
        let first = Write {
            lock: "l",
            expect: Expect::Vacant,
            base: Some(&stale),
            change: &change,
        };
        assert!(matches!(store.write(first.clone()).await.unwrap(), Written::Done(_)));
        assert!(matches!(store.write(first).await.unwrap(), Written::Conflict(_)));
        assert_eq!(store.list().await.unwrap().len(), 1);
        let page = crate::store::ListQuery {
            prefix: "",
            after: Some("l"),
            limit: 1,
        };
        assert!(store.list_page(&page).await.unwrap().items.is_empty());
    }
}
