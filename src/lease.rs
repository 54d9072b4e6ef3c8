//! A held lock that renews itself: the heartbeat behind `run` and [`Locker::with_lock`].
//!
//! The heartbeat renews under the grant's Token, so a renewal can never bring back a lock
//! that was released or taken over. A renewal whose reply is lost is read back (see
//! `Locker::commit`). When renewals keep failing, the lease counts as gone at its end on our
//! monotonic clock minus the margin, because by then a taker may rightly have it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::ci::Identity;
use crate::error::{Error, Occupant, Result};
use crate::locker::{AcquireOptions, Grant, Holding, Locker, ReleaseOptions, Released, RenewOptions, Ttl};

mod set;

pub use set::Leases;

/// Where a lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Ours, renewed in time.
    Held,
    /// Someone else holds it now (or it was released): the store said so.
    Lost {
        /// How it was lost.
        message: String,
        /// Who holds it now.
        occupant: Occupant,
    },
    /// The store could not be reached until the lease ended: it may be someone else's.
    Unknown(String),
}

/// A lock we hold, renewed in the background until released or lost.
#[derive(Debug)]
pub struct Lease {
    locker: Locker,
    grant: Grant,
    state: watch::Receiver<LeaseState>,
    /// The lease end minus the margin, on our monotonic clock: by then a command run under
    /// the lock must be dead. Moves on with every renewal.
    kill_by: watch::Receiver<Option<Instant>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    retention: Duration,
}

/// Refuses a lease that cannot keep `run`'s promise (docs/design.md, "Leases in practice (v2)"): the
/// command gets TERM at the lease end minus the clock margin minus `grace`, and KILL at the
/// lease end minus the margin, so it is dead before anyone may take over. What is left of the
/// lease before TERM must hold two heartbeats, so one lost renewal does not lose the lock.
/// Returns the heartbeat (default: a third of the lease, at most half of what is left).
pub fn check_heartbeat(ttl: Option<Duration>, heartbeat: Option<Duration>, margin: Duration, grace: Duration) -> Result<Option<Duration>> {
    let Some(ttl) = ttl else {
        // No lease end: nothing can expire, so nothing needs renewing.
        return Ok(None);
    };
    let f = |d: Duration| humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string();
    let budget = ttl.saturating_sub(margin + grace);
    if budget.is_zero() {
        return Err(Error::Usage(format!(
            "--ttl {} leaves no time to renew: the command must be stopped --kill-grace ({}) before the lease end minus \
             --clock-margin ({}); use a longer --ttl or a shorter --kill-grace",
            f(ttl),
            f(grace),
            f(margin)
        )));
    }
    let hb = heartbeat.unwrap_or((ttl / 3).min(budget / 2));
    if hb.is_zero() || hb > budget / 2 {
        return Err(Error::Usage(format!(
            "--heartbeat {} must be positive and at most half the lease left before the command is stopped: {} \
             (--ttl {} minus --clock-margin {} minus --kill-grace {}), so one lost renewal does not lose the lock",
            f(hb),
            f(budget),
            f(ttl),
            f(margin),
            f(grace)
        )));
    }
    Ok(Some(hb))
}

impl Locker {
    /// Acquires `lock` and keeps it renewed every `heartbeat` (see [`check_heartbeat`]). The
    /// lease counts as lost `grace` before its end minus the clock margin, so that a command
    /// stopped then (TERM, `grace`, KILL) is dead before anyone may take over.
    pub async fn lease(&self, lock: &str, who: &Identity, opts: &AcquireOptions, heartbeat: Option<Duration>, grace: Duration) -> Result<Lease> {
        let heartbeat = check_heartbeat(opts.ttl, heartbeat, opts.clock_margin, grace)?;
        let grant = self.acquire(lock, who, opts).await?;
        Ok(self.hold(grant, opts, heartbeat, grace))
    }

    /// [`Locker::lease`] for several locks, taken all or none ([`Locker::acquire_all`]), each
    /// with its own heartbeat.
    pub async fn leases(
        &self,
        locks: &[String],
        who: &Identity,
        opts: &AcquireOptions,
        heartbeat: Option<Duration>,
        grace: Duration,
    ) -> Result<Leases> {
        let heartbeat = check_heartbeat(opts.ttl, heartbeat, opts.clock_margin, grace)?;
        let grants = self.acquire_all(locks, who, opts).await?;
        Ok(Leases::new(grants.into_iter().map(|g| self.hold(g, opts, heartbeat, grace)).collect()))
    }

    /// A lease on `grant`, renewed every `heartbeat` (checked by the caller). Its end is
    /// counted from the lease end the store holds, so a grant made a while ago (the first
    /// locks of a multi-lock request) is not judged younger than it is.
    fn hold(&self, grant: Grant, opts: &AcquireOptions, heartbeat: Option<Duration>, grace: Duration) -> Lease {
        let lock = grant.lock.clone();
        let lock = lock.as_str();
        let (state_tx, state) = watch::channel(LeaseState::Held);
        let (stop, stop_rx) = watch::channel(false);
        let valid_until = opts
            .ttl
            .zip(grant.lease_expires_at)
            .map(|(ttl, end)| self.lease_end(end, Instant::now() + ttl));
        let kill_by = valid_until.map(|v| v.checked_sub(opts.clock_margin).unwrap_or(v));
        let (kill_tx, kill_by) = watch::channel(kill_by);
        let task = heartbeat.zip(opts.ttl).zip(valid_until).map(|((every, ttl), valid_until)| {
            let beat = Heartbeat {
                locker: self.clone(),
                lock: lock.to_string(),
                who: Holding::grant(&grant),
                ttl,
                every,
                margin: opts.clock_margin,
                grace,
                retention: opts.retention,
            };
            tokio::spawn(beat.run(valid_until, state_tx, kill_tx, stop_rx))
        });
        Lease {
            locker: self.clone(),
            grant,
            state,
            kill_by,
            stop,
            task,
            retention: opts.retention,
        }
    }

    /// When the lease that the store says ends at `end` (store ms) ends on our monotonic
    /// clock, at the latest `cap`. The end was written on the clock estimate of the moment
    /// of writing, which may lie behind the store's true time by that estimate's
    /// uncertainty; a taker goes by the true time. So what is left is counted from the
    /// latest the store clock can read now: erring towards giving up early, never late.
    fn lease_end(&self, end: i64, cap: Instant) -> Instant {
        let clock = self.store().clock();
        let left = Duration::from_millis((end - clock.now_ms()).max(0) as u64).saturating_sub(clock.uncertainty());
        (Instant::now() + left).min(cap)
    }

    /// Runs `f` while holding `lock`, handing it the fence. If the lease is lost, `f` is
    /// dropped (cancelled) and the result is `Error::LeaseLost`; otherwise the lock is released.
    pub async fn with_lock<F, Fut, T>(&self, lock: &str, who: &Identity, opts: &AcquireOptions, f: F) -> Result<T>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut lease = self.lease(lock, who, opts, None, Duration::ZERO).await?;
        let work = f(lease.fence());
        let lost = lease.lost();
        tokio::select! {
            value = work => {
                lease.release().await?;
                Ok(value)
            }
            end = lost => {
                lease.stop_heartbeat().await;
                Err(end)
            }
        }
    }
}

/// How long a renewal sent after the lease's end may take to answer.
const LATE_ANSWER: Duration = Duration::from_secs(1);

struct Heartbeat {
    locker: Locker,
    lock: String,
    who: Holding,
    ttl: Duration,
    every: Duration,
    margin: Duration,
    grace: Duration,
    retention: Duration,
}

impl Heartbeat {
    async fn run(
        self,
        mut valid_until: Instant,
        state: watch::Sender<LeaseState>,
        kill_by: watch::Sender<Option<Instant>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next = Instant::now() + self.every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let sent = Instant::now();
            // The command must be dead by the lease end minus the margin, so it is told to stop
            // `grace` earlier; a renewal that has not answered by then is no use, whatever it
            // says later. Only a renewal sent after that time (this process was paused) gets a
            // moment to say whether the lock is still ours (lost, not unknown); the last retry,
            // due at TERM time, gets none, so the lease is called lost at TERM time, not later.
            let kill_at = valid_until.checked_sub(self.margin).unwrap_or(valid_until);
            let term_at = kill_at.checked_sub(self.grace).unwrap_or(kill_at);
            let cutoff = if sent <= term_at { term_at } else { sent + self.every.min(LATE_ANSWER) };
            let renewal = tokio::select! {
                biased;
                r = self.locker.renew(&self.lock, &self.who, RenewOptions { ttl: Ttl::For(self.ttl), retention: self.retention, in_history: false }) => r,
                _ = tokio::time::sleep_until(cutoff) => Err(Error::Unavailable {
                    message: "no answer to the renewal".into(),
                    source: None,
                }),
            };
            match renewal {
                Ok(g) => {
                    valid_until = match g.lease_expires_at {
                        Some(end) => self.locker.lease_end(end, sent + self.ttl),
                        None => sent + self.ttl,
                    };
                    let _ = kill_by.send(Some(valid_until.checked_sub(self.margin).unwrap_or(valid_until)));
                    next = sent + self.every;
                }
                Err(Error::LeaseLost { message, occupant }) => {
                    let _ = state.send(LeaseState::Lost { message, occupant });
                    return;
                }
                Err(e) => {
                    if Instant::now() >= term_at {
                        let _ = state.send(LeaseState::Unknown(format!(
                            "could not renew lock {:?} in {} in time (its lease ends in {} on this machine's clock): {}",
                            self.lock,
                            self.locker.store().url(),
                            humantime::format_duration(Duration::from_millis(
                                valid_until.saturating_duration_since(Instant::now()).as_millis() as u64
                            )),
                            crate::report::chain(&e)
                        )));
                        return;
                    }
                    tracing::warn!("renewing lock {:?} failed, retrying: {}", self.lock, crate::report::chain(&e));
                    // Retry soon, but stop trying when the command must be told to stop.
                    next = (Instant::now() + self.every / 4).min(term_at);
                }
            }
        }
    }
}

impl Lease {
    /// The grant.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The fencing token.
    pub fn fence(&self) -> u64 {
        self.grant.fence
    }

    /// Is the lease still ours, as far as we know?
    pub fn is_held(&self) -> bool {
        *self.state.borrow() == LeaseState::Held
    }

    /// The current state.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Resolves when the lease is lost, with the error to report (exit 76). Borrows nothing,
    /// so it can be polled beside other uses of the lease.
    pub fn lost(&self) -> impl Future<Output = Error> + Send + 'static {
        let mut rx = self.state.clone();
        let lock = self.grant.lock.clone();
        async move {
            loop {
                match rx.borrow_and_update().clone() {
                    LeaseState::Lost { message, occupant } => return Error::LeaseLost { message, occupant },
                    LeaseState::Unknown(m) => {
                        return Error::LeaseLost {
                            message: format!("{m} (the lock may be someone else's now)"),
                            occupant: Occupant {
                                lock: lock.clone(),
                                ..Occupant::default()
                            },
                        };
                    }
                    LeaseState::Held => {}
                }
                if rx.changed().await.is_err() {
                    // The heartbeat ended without a verdict (no lease end): never lost.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// When a command run under the lock must be dead: the lease end minus the margin, on
    /// our monotonic clock (`None` without a lease end).
    pub fn kill_by(&self) -> Option<Instant> {
        *self.kill_by.borrow()
    }

    /// Stops renewing and waits for a renewal in flight to finish.
    async fn stop_heartbeat(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the heartbeat, then releases (never before: a renewal in flight could otherwise
    /// be answered after the release; it is conditional on our Token, so it would fail, but we
    /// would report a loss that did not happen).
    pub async fn release(&mut self) -> Result<Released> {
        self.stop_heartbeat().await;
        // Only when the store said the lock is someone else's is there nothing to give back.
        // A lease in doubt (the store did not answer in time) may still be ours: the release
        // is conditional on our token, so trying never touches another grant, and not trying
        // would leave the lock held until its lease ends.
        if matches!(self.state(), LeaseState::Lost { .. }) {
            return Ok(Released::NotHeld);
        }
        let who = Holding::grant(&self.grant);
        self.locker
            .release(
                &self.grant.lock,
                &who,
                &ReleaseOptions {
                    force: None,
                    retention: self.retention,
                },
            )
            .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_must_fit_twice_before_the_command_is_stopped() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // 30 s lease, 2 s margin, 10 s grace: 18 s before TERM, heartbeats of at most 9 s.
        assert_eq!(check_heartbeat(Some(s(30)), None, s(2), s(10)).unwrap(), Some(s(9)));
        assert_eq!(check_heartbeat(Some(s(30)), Some(s(9)), s(2), s(10)).unwrap(), Some(s(9)));
        let err = check_heartbeat(Some(s(30)), Some(s(10)), s(2), s(10)).unwrap_err().to_string();
        assert!(err.contains("half the lease") && err.contains("--kill-grace"), "{err}");
        // The default of a third of the lease where that fits.
        assert_eq!(check_heartbeat(Some(s(120)), None, s(2), s(10)).unwrap(), Some(s(40)));
        // A lease that leaves nothing before TERM.
        let err = check_heartbeat(Some(s(12)), None, s(2), s(10)).unwrap_err().to_string();
        assert!(err.contains("leaves no time"), "{err}");
        assert!(check_heartbeat(Some(s(2)), Some(ms(400)), ms(200), ms(500)).is_ok());
        assert!(check_heartbeat(Some(s(30)), Some(s(0)), s(2), s(1)).is_err());
        assert_eq!(check_heartbeat(None, Some(s(5)), s(2), s(10)).unwrap(), None);
    }
}
