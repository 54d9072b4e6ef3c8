//! The file store's state objects: `DIR/.pipeline-lock-state/ENCODED.json`, one JSON file per
//! key in a directory of their own, so the listing of lock files never meets one. A put is
//! the file store's own compare-and-set: under the directory's `flock`, the bytes on disk are
//! compared with those the decision was made on, and the new file is renamed into place.

use std::path::PathBuf;

use async_trait::async_trait;

use super::super::encode_name;
use super::super::state_objects::{STATE_DIR, STATE_SUFFIX, StateObjects};
use super::super::whole::{Object, PutMode, PutOutcome};
use super::{Bytes, FileDir};
use crate::error::Result;

/// The file name of a state key in the state directory.
pub(crate) fn state_file_name(key: &str) -> String {
    format!("{}{STATE_SUFFIX}", encode_name(key))
}

/// How messages name a state key.
fn state_subject(key: &str) -> String {
    format!("state {key:?}")
}

impl FileDir {
    fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    fn state_path(&self, key: &str) -> PathBuf {
        self.state_dir().join(state_file_name(key))
    }
}

#[async_trait]
impl StateObjects for FileDir {
    async fn get_state(&self, key: &str) -> Result<Option<Object<Bytes>>> {
        // rename() is atomic, so a read needs no directory lock.
        self.load(&state_subject(key), &self.state_path(key))
    }

    async fn put_state(&self, key: &str, body: Vec<u8>, mode: PutMode<'_, Bytes>) -> Result<PutOutcome<Bytes>> {
        let _guard = self.lock_dir()?;
        let dir = self.state_dir();
        std::fs::create_dir_all(&dir).map_err(|e| self.io_error("create the state directory for", &state_subject(key), e))?;
        let path = self.state_path(key);
        let current = self.load(&state_subject(key), &path)?;
        if !mode.holds(current.as_ref().map(|o| o.tag.as_ref())) {
            // What we read under the flock is what is there: no second look needed.
            return Ok(PutOutcome::Refused(Some(current)));
        }
        Ok(PutOutcome::Done(Some(self.replace_at(key, &state_subject(key), &dir, &path, body)?)))
    }

    fn state_location(&self, key: &str) -> String {
        self.state_path(key).display().to_string()
    }
}
