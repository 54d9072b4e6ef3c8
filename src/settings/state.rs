//! `state get|put|delete`'s settings: the key checked for the store, the value read and
//! checked (size, UTF-8, JSON), the writer and its fence, all before any request.

use std::io::Read as _;

use super::Low;
use crate::cli::{StateAction, StateArgs, StateWriteArgs};
use crate::error::{Error, Result};
use crate::state::{self, MAX_VALUE_BYTES, StateWrite};

/// A state command with its checked options.
pub enum StateTask {
    /// `state get KEY`.
    Get {
        /// The key, valid for the store.
        key: String,
    },
    /// `state put` or `state delete` (a write without a value).
    Write(StateWrite),
}

impl Low<'_> {
    pub(super) fn state(&self, args: StateArgs) -> Result<StateTask> {
        Ok(match args.action {
            StateAction::Get(a) => StateTask::Get {
                key: state::check_key(self.store, &a.key)?,
            },
            StateAction::Put(a) => {
                let value = match (&a.value, &a.file) {
                    (Some(v), _) => state::check_value("--value", v.clone().into_bytes(), a.json)?,
                    (None, Some(path)) => state::check_value(&format!("--file {}", path.display()), read_value(path)?, a.json)?,
                    (None, None) => return Err(Error::Usage("state put needs --value V or --file F".into())),
                };
                StateTask::Write(self.state_write(&a.write, Some(value))?)
            }
            StateAction::Delete(a) => StateTask::Write(self.state_write(&a, None)?),
        })
    }

    fn state_write(&self, a: &StateWriteArgs, value: Option<(String, state::Format)>) -> Result<StateWrite> {
        let key = state::check_key(self.store, &a.key)?;
        let writer = self.identity()?.owner;
        Ok(StateWrite {
            key,
            value,
            // A writer without a lock's fence is below every fenced one: it cannot undo what
            // a holder recorded unless it names that fence (docs/design.md, "State beside the lock (v2)").
            fence: a.fence.unwrap_or(0),
            if_version: a.if_version,
            writer,
        })
    }
}

/// Reads at most one byte more than a value may have, so a huge file is refused, not loaded.
fn read_value(path: &std::path::Path) -> Result<Vec<u8>> {
    let cannot = |e: std::io::Error| Error::Usage(format!("cannot read the value from --file {}: {e}", path.display()));
    let mut bytes = Vec::new();
    let limit = MAX_VALUE_BYTES as u64 + 1;
    if path.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes).map_err(cannot)?;
    } else {
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
    }
    Ok(bytes)
}
