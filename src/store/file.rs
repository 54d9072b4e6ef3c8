//! The file store: one JSON file per lock in one directory, for one host. The record logic is
//! the whole-record engine's ([`super::whole`]); this file holds its object primitives. Every
//! read-compare-write happens under an exclusive `flock` on the directory's lock file, and
//! a new version is written to a fresh file (exclusive create) and renamed into place, so a
//! reader never sees half a record and a crash never leaves one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use super::whole::MAX_RECORD_BYTES;
use super::whole::{Object, ObjectPage, Objects, PutMode, PutOutcome, Whole};
use super::{Check, Expect, Observed, Outcome, State, Store, Version, Write, Written, decode_name, encode_name};
use crate::clock::StoreClock;
use crate::error::{Error, Result};

mod state;
pub(crate) use state::state_file_name;

const DIR_LOCK: &str = ".pipeline-lock.dirlock";
pub(crate) const SUFFIX: &str = ".lock";

/// How messages name a lock.
fn lock_subject(lock: &str) -> String {
    format!("lock {lock:?}")
}

/// Locks in one local directory.
pub type FileStore = Whole<FileDir>;

/// The file store's object primitives: the lock files of one directory.
#[derive(Debug)]
pub struct FileDir {
    dir: PathBuf,
    clock: StoreClock,
    requests: std::sync::atomic::AtomicU64,
}

/// The file store's version of a record is its bytes: a write compares the bytes on disk,
/// under the flock, with those its decision was made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bytes(Arc<[u8]>);

impl Whole<FileDir> {
    /// Opens (creating if needed) the directory and proves that exclusive create and `flock`
    /// work there; a filesystem without them cannot hold a lock, so we refuse to start.
    pub fn open(dir: &Path) -> Result<FileStore> {
        FileDir::open(dir).map(Whole::new)
    }
}

impl FileDir {
    fn open(dir: &Path) -> Result<FileDir> {
        let store = FileDir {
            dir: dir.to_path_buf(),
            clock: StoreClock::kernel(),
            requests: Default::default(),
        };
        let url = store.url();
        fs::create_dir_all(dir).map_err(|e| Error::Config(format!("{url}: cannot create the lock directory: {e}")))?;
        let _guard = store.lock_dir()?;
        let probe = dir.join(format!(".probe-{:016x}", rand::random::<u64>()));
        let first = OpenOptions::new().write(true).create_new(true).open(&probe);
        let second = OpenOptions::new().write(true).create_new(true).open(&probe);
        let _ = fs::remove_file(&probe);
        match (first, second) {
            (Ok(_), Err(e)) if e.kind() == ErrorKind::AlreadyExists => Ok(store),
            (Err(e), _) => Err(Error::Config(format!("{url}: cannot create files in the lock directory: {e}"))),
            (Ok(_), _) => Err(Error::Config(format!(
                "{url}: this filesystem does not honour exclusive create, so it cannot hold a lock; use a local directory"
            ))),
        }
    }

    fn path(&self, lock: &str) -> PathBuf {
        self.dir.join(format!("{}{SUFFIX}", encode_name(lock)))
    }

    /// `subject` names what failed: `lock "deploy"` ([`lock_subject`]), `state "deployed"`.
    fn io_error(&self, what: &str, subject: &str, e: std::io::Error) -> Error {
        let message = format!("{}: cannot {what} {subject}: {e}", self.url());
        match e.kind() {
            ErrorKind::PermissionDenied => Error::AccessDenied {
                message: format!("{message}; fix the directory's permissions"),
                source: Some(Box::new(e)),
            },
            _ => Error::other(message, e),
        }
    }

    /// Holds the directory lock until dropped.
    fn lock_dir(&self) -> Result<File> {
        let path = self.dir.join(DIR_LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.io_error("open the directory lock for", "every lock", e))?;
        file.lock().map_err(|e| {
            Error::Config(format!(
                "{}: flock does not work on this filesystem ({e}); use a local directory",
                self.url()
            ))
        })?;
        Ok(file)
    }

    fn load(&self, subject: &str, path: &Path) -> Result<Option<Object<Bytes>>> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("read", subject, e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error("read", subject, e))?;
        let tag = Some(Bytes(bytes.as_slice().into()));
        Ok(Some(Object { bytes, tag }))
    }

    /// Writes `body` in place of the lock's file; returns its new version.
    fn replace(&self, lock: &str, body: Vec<u8>) -> Result<Bytes> {
        self.replace_at(lock, &lock_subject(lock), &self.dir, &self.path(lock), body)
    }

    /// Writes `body` to a fresh file in `dir` and renames it to `path` (in `dir`), so a reader
    /// sees the old bytes or the new ones, never half; `name` names the temporary file,
    /// `subject` the messages.
    fn replace_at(&self, name: &str, subject: &str, dir: &Path, path: &Path, body: Vec<u8>) -> Result<Bytes> {
        let tmp = dir.join(format!(".{}.{:016x}.tmp", encode_name(name), rand::random::<u64>()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io_error("write", subject, e)
        })?;
        Ok(Bytes(body.into()))
    }
}

#[async_trait]
impl Objects for FileDir {
    type Tag = Bytes;

    // Under the directory lock nobody comes between a read and a write (see `edit`).
    const ONE_STEP: bool = true;

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn clock(&self) -> &StoreClock {
        // One host, one clock: the store's clock is this machine's.
        &self.clock
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn get(&self, lock: &str) -> Result<Option<Object<Bytes>>> {
        // rename() is atomic, so a read needs no directory lock.
        self.load(&lock_subject(lock), &self.path(lock))
    }

    async fn put(&self, lock: &str, body: Vec<u8>, mode: PutMode<'_, Bytes>) -> Result<PutOutcome<Bytes>> {
        let _guard = self.lock_dir()?;
        let current = self.load(&lock_subject(lock), &self.path(lock))?;
        if !mode.holds(current.as_ref().map(|o| o.tag.as_ref())) {
            // What we read under the flock is what is there: no second look needed.
            return Ok(PutOutcome::Refused(Some(current)));
        }
        Ok(PutOutcome::Done(Some(self.replace(lock, body)?)))
    }

    async fn edit<F, R, K>(&self, lock: &str, decide: F) -> Result<std::result::Result<(PutOutcome<Bytes>, R), K>>
    where
        F: FnOnce(Option<&Object<Bytes>>) -> Result<std::result::Result<(Vec<u8>, R), K>> + Send,
        R: Send,
        K: Send,
    {
        // The read, the decision and the write under one flock, so the write is never refused.
        let _guard = self.lock_dir()?;
        let current = self.load(&lock_subject(lock), &self.path(lock))?;
        Ok(match decide(current.as_ref())? {
            Ok((body, value)) => Ok((PutOutcome::Done(Some(self.replace(lock, body)?)), value)),
            Err(kept) => Err(kept),
        })
    }

    fn unversioned(&self, lock: &str) -> Error {
        // `load` always keeps the bytes, so this is never met.
        Error::Config(format!("{}: lock {lock:?} was read without its bytes", self.url()))
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage<Bytes>> {
        // Pages in the order of the encoded file names. Each page reads the directory's names
        // once and keeps only the `limit` smallest after `after` (a bounded heap), so memory
        // stays one page's worth whatever the directory holds.
        let prefix = encode_name(prefix);
        let after = after.map(encode_name);
        let entries = fs::read_dir(&self.dir).map_err(|e| self.io_error("list", "the locks", e))?;
        let mut smallest: std::collections::BinaryHeap<String> = std::collections::BinaryHeap::new();
        let mut more = false;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            // Only lock files end in SUFFIX (temp files end in `.tmp`, the directory lock in
            // `.dirlock`); a name may start with a dot, which `encode_name` keeps, so a hidden
            // file can be a lock (`.deploy` is `.deploy.lock`).
            let Some(encoded) = file_name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            if !encoded.starts_with(&prefix) || after.as_deref().is_some_and(|a| encoded <= a) {
                continue;
            }
            let fits = smallest.len() < limit || smallest.peek().is_some_and(|largest| encoded < largest.as_str());
            if fits && decode_name(encoded).is_none() {
                continue;
            }
            if smallest.len() < limit {
                smallest.push(encoded.to_string());
            } else if smallest.peek().is_some_and(|largest| encoded < largest.as_str()) {
                smallest.pop();
                smallest.push(encoded.to_string());
                more = true;
            } else {
                more = true;
            }
        }
        let encoded = smallest.into_sorted_vec();
        let mut out = Vec::with_capacity(encoded.len());
        for e in &encoded {
            let name = decode_name(e).unwrap_or_default();
            let object = self.load(&lock_subject(&name), &self.path(&name))?;
            out.push((name, object));
        }
        let next = if more { out.last().map(|(n, _)| n.clone()) } else { None };
        Ok((out, next))
    }

    async fn doctor(&self, store: &dyn Store) -> Vec<Check> {
        // `open` already refused a directory without exclusive create or flock.
        let mut checks = vec![Check::new(
            "directory",
            Outcome::Pass,
            format!("{} is writable; exclusive create and flock work", self.dir.display()),
        )];
        let lock = format!("pipeline-lock-doctor-{:016x}", rand::random::<u64>());
        let change = crate::record::Change {
            action: crate::record::Action::Release,
            rvn: "doctor".into(),
            now: self.clock.now_ms(),
            lease_expires_at: None,
            expires_at: None,
            fence_floor: self.clock.now_ms().max(0) as u64,
            event: None,
            slots: 1,
            evict: false,
            evicted: Vec::new(),
        };
        let first = store
            .write(Write {
                lock: &lock,
                expect: Expect::Vacant,
                base: None,
                change: &change,
            })
            .await;
        let stale = Observed {
            state: State::Absent,
            version: Version::default(),
        };
        let second = store
            .write(Write {
                lock: &lock,
                expect: Expect::Vacant,
                base: Some(&stale),
                change: &change,
            })
            .await;
        checks.push(match (first, second) {
            (Ok(Written::Done(_)), Ok(Written::Conflict(_))) => {
                Check::new("conditional writes", Outcome::Pass, "a write based on a stale read is refused")
            }
            other => Check::new("conditional writes", Outcome::Fail, format!("unexpected answers {other:?}")),
        });
        let _ = fs::remove_file(self.path(&lock));
        checks
    }
}
