//! What callers of [`super::Locker`] pass in and get back: the options of acquire, renew and
//! release, the grant, the progress report and who a holder is.

use std::sync::Arc;
use std::time::Duration;

use super::RETENTION;
use crate::ciapi::CiApi;
use crate::queue::QueueMode;
use crate::record::Record;
use crate::store::Expect;

/// How long to wait for a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `--no-wait`: exit 73 at once.
    No,
    /// Until granted.
    Forever,
    /// `--wait D` / `--timeout D`: exit 75 after D.
    For(Duration),
}

/// A progress callback: called on the first conflict, then every `progress_every`.
pub type ProgressFn = Arc<dyn Fn(&WaitReport) + Send + Sync>;

/// Options of `acquire` (and of `run`'s acquisition).
#[derive(Clone)]
pub struct AcquireOptions {
    /// Lease length; `None` is `--disable-ttl`.
    pub ttl: Option<Duration>,
    /// Take over a lock acquired longer ago than this.
    pub force_after: Option<Duration>,
    /// How long to wait.
    pub wait: Wait,
    /// Polling interval (jittered).
    pub retry_interval: Duration,
    /// Give up after this many polls.
    pub max_retries: Option<u32>,
    /// Break-glass takeover, with this reason.
    pub force: Option<String>,
    /// `--reason`, stored in Holder.
    pub reason: Option<String>,
    /// Skew margin for store-clock comparisons.
    pub clock_margin: Duration,
    /// How long a record outlives its lease or release before DynamoDB's TTL may delete it.
    pub retention: Duration,
    /// Progress reports while waiting.
    pub progress: Option<ProgressFn>,
    /// How often to report after the first (zero: every poll).
    pub progress_every: Duration,
    /// Who gets a free lock.
    pub queue: QueueMode,
    /// Exit 74 when a newer pipeline of the same project waits for or holds the lock.
    pub supersede: bool,
    /// Our pipeline number, overriding the CI's (`--ordinal`).
    pub ordinal: Option<u64>,
    /// The floor of the prune window (normally 30 s; shorter only for tests).
    pub prune_floor: Duration,
    /// Our CI server's API, for early takeover of holders whose pipeline ended.
    pub ci_api: Option<Arc<CiApi>>,
    /// May a grant our owner already holds (under another token) be re-entered? Yes for
    /// `acquire` (a later stage, a retried job); no for `run`, which only ever holds a grant
    /// of its own process (docs/design.md, "Owner identity and scopes").
    pub reenter: bool,
    /// Owners whose grant means "this job's own pipeline holds the lock": `run` stops at once
    /// instead of waiting on itself. Grants made by `run` (`Holder.Via`) are waited for.
    pub own_pipeline: Vec<String>,
    /// A signal number arriving here stops the wait: the queue entry is removed and the
    /// result is `Error::Interrupted`.
    pub cancel: Option<tokio::sync::watch::Receiver<Option<i32>>>,
    /// The lock's N (`--slots`): a record created now stores it; one of another N is refused.
    pub slots: u32,
    /// A shared hold (`--shared`), beside other shared ones up to N; else exclusive.
    pub shared: bool,
    /// `--backoff`: pauses that grow from `retry_interval` up to a cap; `None`: even pauses.
    pub backoff: Option<crate::backoff::Backoff>,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions {
            ttl: Some(Duration::from_secs(3600)),
            force_after: None,
            wait: Wait::Forever,
            retry_interval: Duration::from_secs(2),
            max_retries: None,
            force: None,
            reason: None,
            clock_margin: Duration::from_secs(2),
            retention: RETENTION,
            progress: None,
            progress_every: Duration::from_secs(30),
            queue: QueueMode::Fifo,
            supersede: false,
            ordinal: None,
            prune_floor: crate::queue::PRUNE_FLOOR,
            ci_api: None,
            reenter: true,
            own_pipeline: Vec::new(),
            cancel: None,
            slots: 1,
            shared: false,
            backoff: None,
        }
    }
}

impl std::fmt::Debug for AcquireOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireOptions")
            .field("ttl", &self.ttl)
            .field("force_after", &self.force_after)
            .field("wait", &self.wait)
            .field("retry_interval", &self.retry_interval)
            .field("max_retries", &self.max_retries)
            .field("queue", &self.queue)
            .field("supersede", &self.supersede)
            .field("ci_api", &self.ci_api)
            .field("reenter", &self.reenter)
            .finish_non_exhaustive()
    }
}

/// How a grant came about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum How {
    /// From free (or absent).
    Acquired,
    /// We already held it (a later stage, a retried job): same fence, lease renewed.
    Reentered,
    /// From a stale or forced holder.
    TookOver {
        /// The previous owner.
        from: String,
        /// The rule that allowed it.
        why: String,
    },
}

/// A lock we hold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grant {
    /// Lock name.
    pub lock: String,
    /// Store URL.
    pub store: String,
    /// Our owner string.
    pub owner: String,
    /// Our grant's token.
    pub token: String,
    /// Fencing token.
    pub fence: u64,
    /// Store ms.
    pub acquired_at: i64,
    /// Store ms; `None` without a lease.
    pub lease_expires_at: Option<i64>,
    /// How we got it.
    pub how: How,
    /// Polls made while waiting.
    pub polls: u32,
    /// Time spent before the grant, in ms.
    pub waited_ms: u64,
    /// The slot held, 1 to N (1 for an exclusive grant).
    pub slot: u32,
    /// The lock's N.
    pub slots: u32,
    /// A shared hold.
    pub shared: bool,
}

/// One progress report while waiting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WaitReport {
    /// Lock name.
    pub lock: String,
    /// Store URL.
    pub store: String,
    /// The record as last read.
    pub holder: Record,
    /// Store-clock now.
    pub now: i64,
    /// Polls so far.
    pub attempt: u32,
    /// Time waited.
    pub waited: Duration,
    /// Store ms at which a takeover becomes possible, if the holder does nothing.
    pub takeover_at: Option<i64>,
    /// The queue order we wait in.
    pub queue: QueueMode,
    /// Our place among the live waiters (1: next), when we are queued.
    pub position: Option<usize>,
    /// Live waiters, us included.
    pub queued: usize,
    /// The live waiters ahead of us, in order: owner and pipeline URL.
    pub ahead: Vec<(String, Option<String>)>,
    /// Ours is a shared request.
    pub shared: bool,
}

/// Who is asking to renew or release: an owner (a later job) and, if known, the grant's token.
#[derive(Debug, Clone)]
pub struct Holding {
    /// The owner string.
    pub owner: String,
    /// The token, when the caller has it (`run`, or `PIPELINE_LOCK_TOKEN`).
    pub token: Option<String>,
    /// Find the grant by owner when the token is stale (a later job handed the token of an
    /// earlier acquire). Off for `run`'s own grant: it never touches another process's grant.
    pub by_owner: bool,
    /// The grant is a shared hold (`--shared`): found among the lock's shared holds.
    pub shared: bool,
}

impl Holding {
    /// A later job of the pipeline: by token when it has one, else (or when stale) by owner.
    pub fn pipeline(owner: &str, token: Option<String>) -> Holding {
        Holding {
            owner: owner.to_string(),
            token,
            by_owner: true,
            shared: false,
        }
    }

    /// The process that made the grant: by its token only.
    pub fn grant(g: &Grant) -> Holding {
        Holding {
            owner: g.owner.clone(),
            token: Some(g.token.clone()),
            by_owner: false,
            shared: g.shared,
        }
    }

    pub(super) fn expect(&self) -> Expect {
        match &self.token {
            Some(t) => Expect::Token(t.clone()),
            None => Expect::Owner(self.owner.clone()),
        }
    }

    /// Is `r` held by this grant (or, by owner, by this pipeline)? Its token if so.
    pub(super) fn finds<'r>(&self, r: &'r Record) -> Option<&'r str> {
        let token = r.token.as_deref()?;
        let by_token = self.token.as_deref() == Some(token);
        let by_owner = (self.by_owner || self.token.is_none()) && r.owner.as_deref() == Some(self.owner.as_str());
        (by_token || by_owner).then_some(token)
    }
}

/// What a renewal sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewOptions {
    /// The lease length.
    pub ttl: Ttl,
    /// How long the record outlives its lease (the `ExpiresAt` tombstone time).
    pub retention: Duration,
    /// Write a `renewed` History event: yes for the `renew` command, no for `run`'s
    /// heartbeat, whose renewals every few seconds would push everything else out.
    pub in_history: bool,
}

/// What the write that [`Locker::retime`] corrects was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// A grant: AcquiredAt is re-stamped too, and a fence that started from absent is raised.
    Grant,
    /// A renewal.
    Renewal,
}

/// The lease length a renewal sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The grant's own (LeaseExpiresAt - RenewedAt), or none if it has no lease end: a
    /// renewal never shortens a lease and never puts an end on a `--disable-ttl` grant.
    Keep,
    /// This long from now.
    For(Duration),
    /// No lease end from now on (`--disable-ttl`).
    NoEnd,
}

/// What `release` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Released {
    /// We held it; now free. The fence of the grant that ended.
    Released {
        /// Fence.
        fence: u64,
    },
    /// Nobody held it (idempotent release).
    NotHeld,
    /// Someone else holds it; left alone.
    HeldByOther {
        /// The holder.
        owner: String,
        /// Their fence.
        fence: u64,
    },
}

/// Options of `release`.
#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    /// Break-glass: release whoever holds it (or a corrupt record), with this reason.
    pub force: Option<String>,
    /// Retention of the tombstone.
    pub retention: Duration,
}

impl Default for ReleaseOptions {
    fn default() -> Self {
        ReleaseOptions {
            force: None,
            retention: RETENTION,
        }
    }
}
