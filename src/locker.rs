//! The lock protocol above the stores: grant, re-entrance, takeover, renew, release, lost
//! replies and waiting. Everything here is store-agnostic; see docs/design.md, rules 1 to 8.

use std::sync::Arc;
use std::time::Duration;

use crate::ciapi::CiApi;
use crate::clock::{local_wall_ms, ms, rfc3339};
use crate::error::{Error, Occupant, Result};
use crate::queue::QueueMode;
use crate::record::{Action, Change, Event, EventKind, Record};
use crate::store::{Expect, Observed, State, Store, Write, Written};

/// How long a record outlives its lease or release before DynamoDB's TTL may delete it.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

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
}

impl Holding {
    /// A later job of the pipeline: by token when it has one, else (or when stale) by owner.
    pub fn pipeline(owner: &str, token: Option<String>) -> Holding {
        Holding {
            owner: owner.to_string(),
            token,
            by_owner: true,
        }
    }

    /// The process that made the grant: by its token only.
    pub fn grant(g: &Grant) -> Holding {
        Holding {
            owner: g.owner.clone(),
            token: Some(g.token.clone()),
            by_owner: false,
        }
    }

    fn expect(&self) -> Expect {
        match &self.token {
            Some(t) => Expect::Token(t.clone()),
            None => Expect::Owner(self.owner.clone()),
        }
    }

    /// Is `r` held by this grant (or, by owner, by this pipeline)? Its token if so.
    fn finds<'r>(&self, r: &'r Record) -> Option<&'r str> {
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

/// The History event that says a grant of `owner` ended without `owner` giving it back:
/// a takeover from it, or a `--force` release by someone else. `None` when the last event
/// about `owner` is its own release (or there is none: never ours, or pushed out of History).
pub fn taken_from<'r>(r: &'r Record, owner: &str) -> Option<&'r Event> {
    let last = r.history.iter().rev().find(|e| {
        let taken = e.event.is_grant() && e.from.as_deref() == Some(owner);
        let released = e.event == EventKind::Released && e.owner == owner;
        taken || released
    })?;
    let forced_away = last.event == EventKind::Released && last.by.as_deref().is_some_and(|b| b != owner);
    (last.event != EventKind::Released || forced_away).then_some(last)
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

/// Lock operations on one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Locker {
    store: Arc<dyn Store>,
}

pub(crate) fn random_hex<const BYTES: usize>() -> String {
    let bytes: [u8; BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How far this machine's clock may be off the store's before a write made on it (the
/// one-request path, before any `Date` was seen) is re-timed on the store clock.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// A lost-reply read-back is tried this many times before the store counts as unreachable.
const READ_BACK_TRIES: u32 = 3;
/// Decisions in a row without a pause (conflicts from racing writers) before we back off.
pub(crate) const EAGER_ROUNDS: u32 = 8;

impl Locker {
    /// A locker on `store`.
    pub fn new(store: Arc<dyn Store>) -> Locker {
        Locker { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The error for an unreadable record: exit 78, with the break-glass command.
    pub fn corrupt(&self, lock: &str, why: &str) -> Error {
        Error::Config(format!(
            "lock {lock:?} in {store} holds a record that cannot be read ({why}); it is never treated as free. \
             Look at it, then clear it with: pipeline-lock release --store {store} --lock '{lock}' --force --reason '...'",
            store = self.store.url()
        ))
    }

    pub(crate) fn change(&self, action: Action, lease: Option<Duration>, retention: Duration, event: Option<Event>) -> Change {
        let now = self.store.clock().now_ms();
        let lease_expires_at = lease.map(|l| now.saturating_add(ms(l)));
        let event = event.map(|e| Event { at: now, ..e });
        let gc_from = match action {
            Action::Release => Some(now),
            _ => lease_expires_at,
        };
        Change {
            action,
            rvn: random_hex::<8>(),
            now,
            lease_expires_at,
            expires_at: gc_from.map(|t| t / 1000 + retention.as_secs() as i64),
            fence_floor: self.fence_floor(),
            event,
        }
    }

    /// Where a record created now starts its fence: the latest the store clock can read now
    /// (our estimate plus its uncertainty), plus the second by which another runner's clock
    /// may be off before its write is re-timed. Any grant made earlier got less.
    fn fence_floor(&self) -> u64 {
        let clock = self.store.clock();
        (clock.now_ms() + ms(clock.uncertainty()) + ms(CLOCK_SLACK)).max(0) as u64
    }

    /// One conditional write, surviving lost replies (docs/design.md, rule 6) and queue traffic.
    ///
    /// A holder's write made without a base (renew, release, retime) only cares about its
    /// Token (and Rvn), which waiter bookkeeping never changes. A whole-record store still
    /// refuses it when a waiter rewrote the record between its read and its write; the
    /// refusal then shows a record that meets the condition, and the write is made again on
    /// that record. Grants are left to the caller, who must decide again (the queue moved).
    pub(crate) async fn commit(&self, lock: &str, expect: Expect, base: Option<&Observed>, change: &Change) -> Result<Written> {
        let holder_write = matches!(expect, Expect::Owner(_) | Expect::Token(_) | Expect::TokenRvn { .. } | Expect::Rvn(_));
        let mut rebased: Option<Observed> = None;
        for round in 0..EAGER_ROUNDS {
            let written = self.commit_once(lock, expect.clone(), rebased.as_ref().or(base), change).await?;
            match written {
                Written::Conflict(obs) if base.is_none() && holder_write && expect.holds(&obs.state) && round + 1 < EAGER_ROUNDS => {
                    tracing::debug!("write to {lock:?} crossed a queue update; again on the new record");
                    rebased = Some(obs);
                }
                other => return Ok(other),
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under our write", self.store.url()),
            source: None,
        })
    }

    /// One conditional write; after no answer, the read-back of rule 6.
    async fn commit_once(&self, lock: &str, expect: Expect, base: Option<&Observed>, change: &Change) -> Result<Written> {
        let err = match self.store.write(Write { lock, expect, base, change }).await {
            Err(e @ Error::Unavailable { .. }) => e,
            other => return other,
        };
        tracing::debug!("write to {lock:?} got no answer ({err}); reading back");
        let mut last = err;
        for attempt in 0..READ_BACK_TRIES {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            match self.store.read(lock, true).await {
                Ok(obs) => {
                    return Ok(match &obs.state {
                        State::Valid(r) if r.rvn == change.rvn => Written::Done(r.clone()),
                        _ => Written::Conflict(obs),
                    });
                }
                Err(e @ Error::Unavailable { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// After a write made before the store's clock was known (the one-request fast path),
    /// rewrites the times if this machine's clock turned out to disagree with the store's.
    /// A grant that created its record from absent also gets its fence raised to the store
    /// ms: it started at this machine's ms, which may lie below an earlier fence of the lock.
    pub(crate) async fn retime(
        &self,
        lock: &str,
        record: Record,
        lease: Option<Duration>,
        retention: Duration,
        after: Wrote,
    ) -> Result<Option<Record>> {
        let restamp = after == Wrote::Grant;
        let now = self.store.clock().now_ms();
        let skew = (now - local_wall_ms()).abs();
        if skew <= ms(CLOCK_SLACK) {
            return Ok(Some(record));
        }
        tracing::info!("this machine's clock is {skew} ms off the store's; rewriting the lease times on the store clock");
        let token = record.token.clone().unwrap_or_default();
        let created = record.history.len() == 1 && record.history[0].event.is_grant();
        let floor = self.fence_floor() + 1;
        let raise_fence = (restamp && created && record.fence < floor).then_some(floor);
        let change = self.change(Action::Renew { restamp, raise_fence }, lease, retention, None);
        let expect = Expect::TokenRvn {
            token,
            rvn: record.rvn.clone(),
        };
        match self.commit(lock, expect, None, &change).await? {
            Written::Done(r) => Ok(Some(r)),
            // Taken over in between: the grant is gone; the caller goes back to waiting.
            Written::Conflict(_) => Ok(None),
        }
    }

    /// After a release made before the store's clock was known: a tombstone whose ExpiresAt
    /// came from a clock that is off would be garbage-collected early (or late), so it is
    /// rewritten on the store clock. Best effort: a grant in between wrote its own times.
    async fn retime_tombstone(&self, lock: &str, record: &Record, retention: Duration) -> Result<()> {
        let skew = (self.store.clock().now_ms() - local_wall_ms()).abs();
        if skew <= ms(CLOCK_SLACK) {
            return Ok(());
        }
        tracing::info!("this machine's clock is {skew} ms off the store's; rewriting the tombstone's ExpiresAt on the store clock");
        let change = self.change(Action::Release, None, retention, None);
        self.commit(lock, Expect::Rvn(record.rvn.clone()), None, &change).await.map(|_| ())
    }

    pub(crate) fn grant(&self, lock: &str, r: &Record, how: How, polls: u32) -> Grant {
        Grant {
            lock: lock.to_string(),
            store: self.store.url(),
            owner: r.owner.clone().unwrap_or_default(),
            token: r.token.clone().unwrap_or_default(),
            fence: r.fence,
            acquired_at: r.acquired_at.unwrap_or_default(),
            lease_expires_at: r.lease_expires_at,
            how,
            polls,
            waited_ms: 0,
        }
    }

    /// Extends the lease of a lock `who` holds. Exit 76 if it is no longer theirs.
    ///
    /// A renewal that knows its lease and its token (`run`'s heartbeat) is one write. One that
    /// keeps the grant's own lease length, or may have to find the grant by owner (a later
    /// job whose exported token is stale), reads the record first.
    pub async fn renew(&self, lock: &str, who: &Holding, opts: RenewOptions) -> Result<Grant> {
        let RenewOptions { ttl, retention, in_history } = opts;
        let synced = self.store.clock().is_synced();
        let event = in_history.then(|| how_event(EventKind::Renewed, &who.owner, None)).flatten();
        let mut seen = match (ttl, who.by_owner) {
            (Ttl::For(_) | Ttl::NoEnd, false) => None,
            _ => Some(self.store.read(lock, true).await?),
        };
        for _ in 0..EAGER_ROUNDS {
            let (expect, lease) = match &seen {
                None => (who.expect(), ttl_len(ttl, None, 0)),
                Some(obs) => match &obs.state {
                    State::Corrupt(why) => return Err(self.corrupt(lock, why)),
                    State::Valid(r) => match who.finds(r) {
                        Some(token) => (Expect::Token(token.to_string()), ttl_len(ttl, Some(r), self.store.clock().now_ms())),
                        None => return Err(self.lost(lock, who, obs)),
                    },
                    State::Absent => return Err(self.lost(lock, who, obs)),
                },
            };
            let change = self.change(
                Action::Renew {
                    restamp: false,
                    raise_fence: None,
                },
                lease,
                retention,
                event.clone(),
            );
            match self.commit(lock, expect, None, &change).await? {
                Written::Done(r) => {
                    let r = if synced {
                        Some(r)
                    } else {
                        self.retime(lock, r, lease, retention, Wrote::Renewal).await?
                    };
                    return match r {
                        Some(r) => Ok(self.grant(lock, &r, How::Reentered, 0)),
                        None => Err(self.lost(lock, who, &self.store.read(lock, true).await?)),
                    };
                }
                // Decide again on what is there: the grant under another token of ours, or gone.
                Written::Conflict(obs) => seen = Some(obs),
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under renew", self.store.url()),
            source: None,
        })
    }

    /// The error for a grant of `who` that is gone: exit 76, saying who has the lock now and,
    /// where History tells, who took it from us and when.
    fn lost(&self, lock: &str, who: &Holding, obs: &Observed) -> Error {
        let record = match &obs.state {
            State::Corrupt(why) => return self.corrupt(lock, why),
            State::Valid(r) => Some(r),
            State::Absent => None,
        };
        let now = match record {
            Some(r) if !r.is_free() => format!("held by {} (fence {})", r.owner.as_deref().unwrap_or("?"), r.fence),
            Some(_) => "free".to_string(),
            None => "absent (its record was deleted)".to_string(),
        };
        let how = match record.and_then(|r| taken_from(r, &who.owner)) {
            Some(e) => format!("{} at {}", taken_text(e), rfc3339(e.at)),
            None => "it was taken over (lease ended or --force-after) or released".to_string(),
        };
        Error::LeaseLost {
            message: format!(
                "lock {lock:?} in {} is not held by {} any more: {how}; it is {now} now. Work done since then ran \
                 without the lock; acquire it again, and renew more often than the lease (--ttl)",
                self.store.url(),
                who.owner
            ),
            occupant: Occupant::of(lock, record),
        }
    }

    /// Gives back the lock `who` holds. Someone else's lock is left alone; a grant that was
    /// taken over from `who` is an error (exit 76): the pipeline ran part of its protected
    /// work without the lock and must go red.
    pub async fn release(&self, lock: &str, who: &Holding, opts: &ReleaseOptions) -> Result<Released> {
        if let Some(reason) = &opts.force {
            return self.force_release(lock, who, reason, opts).await;
        }
        let synced = self.store.clock().is_synced();
        let mut expect = who.expect();
        for _ in 0..EAGER_ROUNDS {
            let event = how_event(EventKind::Released, &who.owner, None);
            let change = self.change(Action::Release, None, opts.retention, event);
            let obs = match self.commit(lock, expect.clone(), None, &change).await? {
                Written::Done(r) => {
                    if !synced {
                        self.retime_tombstone(lock, &r, opts.retention).await?;
                    }
                    return Ok(Released::Released { fence: r.fence });
                }
                Written::Conflict(obs) => obs,
            };
            let r = match &obs.state {
                State::Corrupt(why) => return Err(self.corrupt(lock, why)),
                State::Absent => return Ok(Released::NotHeld),
                State::Valid(r) => r,
            };
            if let Some(token) = who.finds(r) {
                // Ours under another token (re-acquired since the token was exported).
                expect = Expect::Token(token.to_string());
                continue;
            }
            if taken_from(r, &who.owner).is_some() {
                return Err(self.lost(lock, who, &obs));
            }
            if r.is_free() {
                return Ok(Released::NotHeld);
            }
            return Ok(Released::HeldByOther {
                owner: r.owner.clone().unwrap_or_default(),
                fence: r.fence,
            });
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under release", self.store.url()),
            source: None,
        })
    }

    async fn force_release(&self, lock: &str, who: &Holding, reason: &str, opts: &ReleaseOptions) -> Result<Released> {
        for _ in 0..EAGER_ROUNDS {
            let obs = self.store.read(lock, true).await?;
            let (expect, previous) = match &obs.state {
                State::Absent => return Ok(Released::NotHeld),
                State::Valid(r) if r.is_free() => return Ok(Released::NotHeld),
                State::Valid(r) => (
                    Expect::TokenRvn {
                        token: r.token.clone().unwrap_or_default(),
                        rvn: r.rvn.clone(),
                    },
                    r.owner.clone().unwrap_or_default(),
                ),
                State::Corrupt(_) => (Expect::Exact, "an unreadable record".to_string()),
            };
            let event = Event {
                event: EventKind::Released,
                owner: previous.clone(),
                fence: None,
                at: self.store.clock().now_ms(),
                by: Some(who.owner.clone()),
                why: Some(format!("--force: {reason}")),
                from: None,
            };
            let change = self.change(Action::Release, None, opts.retention, Some(event));
            if let Written::Done(r) = self.commit(lock, expect, Some(&obs), &change).await? {
                tracing::warn!("force-released lock {lock:?} in {} from {previous}: {reason}", self.store.url());
                return Ok(Released::Released { fence: r.fence });
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under release --force", self.store.url()),
            source: None,
        })
    }

    /// The record of one lock, read consistently.
    pub async fn status(&self, lock: &str) -> Result<Observed> {
        self.store.read(lock, true).await
    }

    /// Every lock in the store.
    pub async fn list(&self) -> Result<Vec<(String, Observed)>> {
        self.store.list().await
    }
}

pub(crate) fn how_event(kind: EventKind, owner: &str, why: Option<String>) -> Option<Event> {
    Some(Event {
        event: kind,
        owner: owner.to_string(),
        fence: None,
        at: 0,
        by: None,
        why,
        from: None,
    })
}

/// The lease a renewal writes: `Keep` reads it off the grant.
fn ttl_len(ttl: Ttl, grant: Option<&Record>, now: i64) -> Option<Duration> {
    match ttl {
        Ttl::For(d) => Some(d),
        Ttl::NoEnd => None,
        Ttl::Keep => grant.and_then(|r| crate::policy::kept_lease(r, now, None)),
    }
}

/// "taken over by X (why)" / "released by X with --force (why)", for messages.
fn taken_text(e: &Event) -> String {
    let why = e.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
    match e.event {
        EventKind::Released => format!("it was released by {} with --force{why}", e.by.as_deref().unwrap_or("?")),
        _ => format!("it was taken over by {}{why}", e.owner),
    }
}

/// `base` scaled by a random factor in [0.75, 1.25): racing writers do not retry in lockstep.
pub(crate) fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}
