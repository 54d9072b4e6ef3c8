//! The safety checker's negative control (see `tests/safety.rs`): a store wrapper that breaks
//! docs/design.md's rule 4 on purpose, so a test can show that the checker notices. A checker that
//! cannot fail proves nothing.
//!
//! Compiled only with the `negative-control` feature (test builds enable it; release builds
//! never do) and active only when `PIPELINE_LOCK_TEST_BREAK` names a mode. Without the
//! variable the wrapper is not even constructed.
//!
//! `unconditional-takeover`: a takeover (`Expect::TokenRvn`) is written without its condition:
//! the record the taker computed from what it read overwrites whatever is there now, like a
//! read-then-unconditional-put. Two takers of one stale record then both "win", with the
//! same fence, and a holder that renewed meanwhile is overwritten.
//!
//! `slot-count`: a shared grant (`SharedOp::Grant`, conditional on the version read) is
//! written without its condition. Two requests that read the same free (or stale) slot both
//! get it, with the same fence: more holders than the pool has slots, two in one slot.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::dynamo::DynamoStore;
use super::file::FileStore;
use super::s3::S3Store;
use super::{Expect, Hooked, State, Store, StoreUrl, Write, WriteHook, Written, aws, encode_name};
use crate::error::{Error, Result};
use crate::record::{Action, Record, SharedOp};

/// The variable that switches the negative control on.
pub const VAR: &str = "PIPELINE_LOCK_TEST_BREAK";

/// How the protocol is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Takeovers ignore the Token+Rvn condition.
    UnconditionalTakeover,
    /// Shared grants ignore the condition on the version read (the pool's slot count).
    SlotCount,
}

impl Mode {
    /// The mode `PIPELINE_LOCK_TEST_BREAK` names, if set.
    pub fn from_env() -> Result<Option<Mode>> {
        match std::env::var(VAR).ok().as_deref() {
            None | Some("") => Ok(None),
            Some("unconditional-takeover") => Ok(Some(Mode::UnconditionalTakeover)),
            Some("slot-count") => Ok(Some(Mode::SlotCount)),
            // Broken above the store, in how `run` finds its owner (see `settings::old_owner_rule`).
            Some("old-owner-rule") => Ok(None),
            Some(other) => Err(Error::Usage(format!(
                "{VAR}={other:?} is not a known mode; the modes are unconditional-takeover, slot-count and old-owner-rule"
            ))),
        }
    }
}

/// Where an unconditional write goes: around the store's own compare-and-set.
#[derive(Debug)]
enum Raw {
    File(PathBuf),
    Dynamo(DynamoStore),
    S3(S3Store),
}

/// A store whose takeovers (or shared grants) are unconditional.
#[derive(Debug)]
pub struct Broken {
    inner: Arc<dyn Store>,
    raw: Raw,
    mode: Mode,
}

/// Opens the store `url` names, wrapped.
pub async fn open(mode: Mode, url: &StoreUrl, aws_opts: &aws::AwsOptions) -> Result<Arc<dyn Store>> {
    match mode {
        Mode::UnconditionalTakeover => {
            tracing::warn!("negative control {VAR}=unconditional-takeover: this process takes locks over without the Token+Rvn condition")
        }
        Mode::SlotCount => tracing::warn!("negative control {VAR}=slot-count: this process writes shared grants without their condition"),
    }
    let (inner, raw): (Arc<dyn Store>, Raw) = match url {
        StoreUrl::DynamoDb { table } => {
            let s = DynamoStore::connect(table, aws_opts).await?;
            (Arc::new(s.clone()), Raw::Dynamo(s))
        }
        StoreUrl::S3 { bucket, prefix } => {
            let s = S3Store::connect(bucket, prefix, aws_opts).await?;
            (Arc::new(s.clone()), Raw::S3(s))
        }
        StoreUrl::File { dir } => (Arc::new(FileStore::open(dir)?), Raw::File(dir.clone())),
    };
    Ok(Arc::new(Hooked(Broken { inner, raw, mode })))
}

impl Broken {
    async fn overwrite(&self, lock: &str, record: &Record) -> Result<()> {
        match &self.raw {
            Raw::File(dir) => {
                // Under the directory lock, so the store's own writers see a whole file; but
                // with no look at what is there.
                let guard = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join(".pipeline-lock.dirlock"));
                let io = |e: std::io::Error| Error::other("negative control: file write failed", e);
                let guard: File = guard.map_err(io)?;
                guard.lock().map_err(io)?;
                let path = dir.join(format!("{}.lock", encode_name(lock)));
                let tmp = dir.join(format!(".{}.{:016x}.broken", encode_name(lock), rand::random::<u64>()));
                let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io)?;
                f.write_all(&serde_json::to_vec_pretty(record).map_err(|e| Error::other("negative control: cannot encode the record", e))?)
                    .map_err(io)?;
                f.sync_all().map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
            }
            Raw::Dynamo(s) => s.overwrite(record).await?,
            Raw::S3(s) => s.objects().overwrite(lock, record).await?,
        }
        Ok(())
    }
}

#[async_trait]
impl WriteHook for Broken {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    async fn write(&self, w: Write<'_>) -> Result<Written> {
        let broken = match self.mode {
            Mode::UnconditionalTakeover => matches!(w.expect, Expect::TokenRvn { .. }),
            Mode::SlotCount => matches!(w.change.action, Action::Shared(SharedOp::Grant { .. })),
        };
        if !broken {
            return self.inner.write(w).await;
        }
        // The record as the taker saw it (a re-read only for the retime path, which has none).
        let fresh;
        let seen = match w.base {
            Some(b) => b,
            None => {
                fresh = self.inner.read(w.lock, true).await?;
                &fresh
            }
        };
        let State::Valid(before) = &seen.state else {
            return self.inner.write(w).await;
        };
        let next = before.apply(w.change);
        tracing::warn!(
            "negative control: overwriting lock {:?} unconditionally with fence {}",
            w.lock,
            next.fence
        );
        self.overwrite(w.lock, &next).await?;
        Ok(Written::Done(next))
    }
}
