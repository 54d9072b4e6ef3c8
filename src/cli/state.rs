//! Arguments of `state get|put|delete KEY` (docs/design.md, "State beside the lock (v2)").

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `state`: a small value beside the locks, fenced.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// What to do with the key.
    #[command(subcommand)]
    pub action: StateAction,
}

/// The state commands.
#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Show a key's value, version, fence, writer and time (never written: exit 0, empty value).
    Get(StateGetArgs),
    /// Store a value (at most 64 KiB); refused with exit 79 below the stored fence or off --if-version.
    Put(StatePutArgs),
    /// Delete a key's value; its version and fence stay, so a stale writer is still refused.
    Delete(StateWriteArgs),
}

/// Options of `state get`.
#[derive(Debug, Args)]
pub struct StateGetArgs {
    /// The key (e.g. deployed/prod).
    #[arg(value_name = "KEY")]
    pub key: String,
}

/// Options every state write takes.
#[derive(Debug, Args)]
pub struct StateWriteArgs {
    /// The key (e.g. deployed/prod).
    #[arg(value_name = "KEY")]
    pub key: String,
    /// This writer's fence: refused (exit 79) when the stored fence is higher [default: the
    /// PIPELINE_LOCK_FENCE that acquire exports and run gives its command; else 0]
    #[arg(long, env = "PIPELINE_LOCK_FENCE", value_name = "F")]
    pub fence: Option<u64>,
    /// Only if the stored version is still VER (from `state get`; 0: never written), else exit 79.
    #[arg(long, value_name = "VER")]
    pub if_version: Option<u64>,
}

/// Options of `state put`.
#[derive(Debug, Args)]
pub struct StatePutArgs {
    /// Key, fence and version.
    #[command(flatten)]
    pub write: StateWriteArgs,
    /// The value, as text.
    #[arg(
        long,
        value_name = "V",
        required_unless_present = "file",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    pub value: Option<String>,
    /// Read the value from this file (`-`: standard input).
    #[arg(long, value_name = "F")]
    pub file: Option<PathBuf>,
    /// The value is a JSON document: checked, stored compact, shown as JSON by `get --output json`.
    #[arg(long)]
    pub json: bool,
}
