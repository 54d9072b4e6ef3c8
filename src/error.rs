//! The library's error type. Contention is not an error (see [`crate::store::Written`]);
//! these are the outcomes a caller has to act on, each with its exit code.

use crate::exit;

/// What went wrong, named so that a caller (and an exit code) can tell the cases apart.
/// Every message names the lock and the store and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input from the user: flags, names, durations, environment.
    #[error("{0}")]
    Usage(String),
    /// The store is missing, misconfigured, or holds a record we cannot read.
    #[error("{0}")]
    Config(String),
    /// The store refused an action for lack of permission.
    #[error("{message}")]
    AccessDenied {
        /// Human text naming the action and resource.
        message: String,
        /// The store's answer, when it came from one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The store did not answer (or throttled us) after our retries.
    #[error("{message}")]
    Unavailable {
        /// Human text naming the store and what was tried.
        message: String,
        /// The last underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// `--no-wait` (or `run` inside its own pipeline's lock): someone else holds the lock.
    #[error("{message}")]
    Held {
        /// Human text naming the lock, the store, the holder and the fix.
        message: String,
        /// Who is in the lock (no owner when it is free but others are queued ahead).
        occupant: Occupant,
    },
    /// Waited as long as allowed.
    #[error("{0}")]
    TimedOut(String),
    /// `release --strict`: someone else holds the lock.
    #[error("{message}")]
    HeldByOther {
        /// Human text.
        message: String,
        /// Who holds it.
        occupant: Occupant,
    },
    /// The lease we held is gone (taken over, or could not be renewed in time).
    #[error("{message}")]
    LeaseLost {
        /// Human text: how it was lost and what to do.
        message: String,
        /// Who holds it now, as far as known (no owner: free, absent, or the store was unreachable).
        occupant: Occupant,
    },
    /// A newer pipeline waits for or holds the lock.
    #[error("{0}")]
    Superseded(String),
    /// A signal stopped us while waiting; the queue entry was removed. Exit 128 + signal.
    #[error("{message}")]
    Interrupted {
        /// The signal number.
        signal: i32,
        /// What was given up.
        message: String,
    },
    /// `run --max-duration`: the command ran too long and was stopped; the lock was released.
    #[error("{0}")]
    MaxDuration(String),
    /// `state put` or `state delete` refused: a newer fence or another version is stored.
    #[error("{message}")]
    StateRefused {
        /// Human text: the stored fence or version, who wrote it, and what to do.
        message: String,
        /// The state key.
        key: String,
    },
    /// Anything else, with its source chain.
    #[error("{message}")]
    Other {
        /// What we were doing.
        message: String,
        /// Why it failed.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// The process exit code that docs/design.md ("Exit codes") assigns to this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Config(_) => exit::CONFIG,
            Error::AccessDenied { .. } => exit::ACCESS_DENIED,
            Error::Unavailable { .. } => exit::UNAVAILABLE,
            Error::Held { .. } => exit::HELD,
            Error::TimedOut(_) => exit::TIMED_OUT,
            Error::HeldByOther { .. } => exit::HELD_BY_OTHER,
            Error::LeaseLost { .. } => exit::LEASE_LOST,
            Error::Superseded(_) => exit::SUPERSEDED,
            Error::Interrupted { signal, .. } => exit::after_signal(*signal),
            Error::StateRefused { .. } => exit::STATE_REFUSED,
            Error::MaxDuration(_) => exit::MAX_DURATION,
            Error::Other { .. } => exit::UNEXPECTED,
        }
    }

    pub(crate) fn other(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Other {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Who is in a lock, as an error reports it, for library callers to match on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupant {
    /// The lock name.
    pub lock: String,
    /// The holder's owner, when someone holds it.
    pub owner: Option<String>,
    /// The holder's fence, when someone holds it.
    pub fence: Option<u64>,
}

impl Occupant {
    /// The holder of `record` (nobody when it is free).
    pub fn of(lock: &str, record: Option<&crate::record::Record>) -> Occupant {
        let held = record.filter(|r| !r.is_free());
        Occupant {
            lock: lock.to_string(),
            owner: held.and_then(|r| r.owner.clone()),
            fence: held.map(|r| r.fence),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
