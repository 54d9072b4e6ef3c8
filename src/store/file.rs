//! The file store: one JSON file per lock in one directory, for one host. Every
//! read-compare-write happens under an exclusive `flock` on the directory's lock file, and
//! a new version is written to a fresh file (exclusive create) and renamed into place, so a
//! reader never sees half a record and a crash never leaves one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Check, Expect, Observed, Outcome, State, Store, Version, VersionKind, WaiterUpdate, Write, Written, decode_name, encode_name};
use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::record::Record;

/// Largest record we read; anything bigger is not ours.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

const DIR_LOCK: &str = ".pipeline-lock.dirlock";
pub(crate) const SUFFIX: &str = ".lock";

/// Locks in one local directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    clock: StoreClock,
    requests: std::sync::atomic::AtomicU64,
}

impl FileStore {
    /// Opens (creating if needed) the directory and proves that exclusive create and `flock`
    /// work there; a filesystem without them cannot hold a lock, so we refuse to start.
    pub fn open(dir: &Path) -> Result<FileStore> {
        let store = FileStore {
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

    fn io_error(&self, what: &str, lock: &str, e: std::io::Error) -> Error {
        let message = format!("{}: cannot {what} lock {lock:?}: {e}", self.url());
        match e.kind() {
            ErrorKind::PermissionDenied => Error::AccessDenied {
                message: format!("{message}; fix the directory's permissions"),
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
            .map_err(|e| self.io_error("open the directory lock for", "*", e))?;
        file.lock().map_err(|e| {
            Error::Config(format!(
                "{}: flock does not work on this filesystem ({e}); use a local directory",
                self.url()
            ))
        })?;
        Ok(file)
    }

    fn load(&self, lock: &str, path: &Path) -> Result<Observed> {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Observed {
                    state: State::Absent,
                    version: Version::default(),
                });
            }
            Err(e) => return Err(self.io_error("read", lock, e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io_error("read", lock, e))?;
        Ok(parse_bytes(lock, bytes))
    }

    /// Writes `record` in place of the lock's file; returns the bytes written (its new version).
    fn replace(&self, lock: &str, path: &Path, record: &Record) -> Result<Vec<u8>> {
        let tmp = self.dir.join(format!(".{}.{:016x}.tmp", encode_name(lock), rand::random::<u64>()));
        let body = serde_json::to_vec_pretty(record).map_err(|e| Error::other("cannot encode the lock record", e))?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io_error("write", lock, e)
        })?;
        Ok(body)
    }
}

/// Parses a stored JSON record. Shared with the S3 store, which stores the same bytes.
pub(crate) fn parse_bytes(lock: &str, bytes: Vec<u8>) -> Observed {
    let state = if bytes.len() as u64 > MAX_RECORD_BYTES {
        State::Corrupt(format!("the record is larger than {MAX_RECORD_BYTES} bytes"))
    } else {
        match serde_path_to_error::deserialize::<_, Record>(&mut serde_json::Deserializer::from_slice(&bytes)) {
            Ok(mut r) => match r.validate(lock) {
                Ok(()) => {
                    r.fill_history_fences();
                    State::Valid(r)
                }
                Err(why) => State::Corrupt(why),
            },
            Err(e) => State::Corrupt(format!("not a lock record: {}", super::at_path(&e))),
        }
    };
    Observed {
        state,
        version: Version(VersionKind::Bytes(Arc::new(bytes))),
    }
}

/// The fence of a record we cannot parse, when its JSON still carries one.
pub(crate) fn salvage_fence(version: &Version) -> Option<u64> {
    match &version.0 {
        VersionKind::Bytes(b) => serde_json::from_slice::<serde_json::Value>(b).ok()?.get("Fence")?.as_u64(),
        _ => None,
    }
}

fn same_version(a: &Version, b: &Version) -> bool {
    match (&a.0, &b.0) {
        (VersionKind::Bytes(x), VersionKind::Bytes(y)) => x == y,
        (VersionKind::None, VersionKind::None) => true,
        _ => false,
    }
}

#[async_trait]
impl Store for FileStore {
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

    async fn read(&self, lock: &str, _consistent: bool) -> Result<Observed> {
        // rename() is atomic, so a read needs no directory lock.
        self.load(lock, &self.path(lock))
    }

    async fn write(&self, w: Write<'_>) -> Result<Written> {
        let path = self.path(w.lock);
        let _guard = self.lock_dir()?;
        let current = self.load(w.lock, &path)?;
        let unchanged = w.base.is_none_or(|b| same_version(&b.version, &current.version));
        if !unchanged || !w.admits(&current.state) {
            return Ok(Written::Conflict(current));
        }
        let next = match (&w.expect, &current.state) {
            (Expect::Exact, State::Valid(r)) => r.apply(w.change),
            (Expect::Exact, _) => super::salvage(w.lock, salvage_fence(&current.version), w.change),
            (_, State::Valid(r)) => r.apply(w.change),
            _ => Record::created(w.lock, w.change),
        };
        self.replace(w.lock, &path, &next)?;
        Ok(Written::Done(next))
    }

    async fn update_waiters(&self, u: WaiterUpdate<'_>) -> Result<Option<Observed>> {
        // Under the directory lock the read and the write cannot be interleaved with anyone
        // else's, so the base is not needed: the update applies to what is there now.
        let path = self.path(u.lock);
        let _guard = self.lock_dir()?;
        let current = self.load(u.lock, &path)?;
        let State::Valid(record) = &current.state else {
            return Ok(Some(current));
        };
        let next = record.with_waiters(u.set, u.remove, u.prune);
        if next.waiters == record.waiters {
            return Ok(Some(current));
        }
        let bytes = self.replace(u.lock, &path, &next)?;
        Ok(Some(Observed {
            state: State::Valid(next),
            version: Version(VersionKind::Bytes(Arc::new(bytes))),
        }))
    }

    async fn list(&self) -> Result<Vec<(String, Observed)>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| self.io_error("list", "*", e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| !n.starts_with('.'))
                .and_then(decode_name)
            else {
                continue;
            };
            let observed = self.load(&name, &entry.path())?;
            out.push((name, observed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn doctor(&self) -> Vec<Check> {
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
        };
        let first = self
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
        let second = self
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
