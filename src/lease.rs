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
use crate::error::{Error, Result};
use crate::locker::{AcquireOptions, Grant, Holding, Locker, ReleaseOptions, Released};

/// Where a lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Ours, renewed in time.
    Held,
    /// Someone else holds it now (or it was released): the store said so.
    Lost(String),
    /// The store could not be reached until the lease ended: it may be someone else's.
    Unknown(String),
}

/// A lock we hold, renewed in the background until released or lost.
#[derive(Debug)]
pub struct Lease {
    locker: Locker,
    grant: Grant,
    state: watch::Receiver<LeaseState>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    retention: Duration,
}

/// Refuses heartbeats that cannot keep a lease alive.
pub fn check_heartbeat(ttl: Option<Duration>, heartbeat: Option<Duration>) -> Result<Option<Duration>> {
    let Some(ttl) = ttl else {
        // No lease end: nothing can expire, so nothing needs renewing.
        return Ok(None);
    };
    let hb = heartbeat.unwrap_or(ttl / 3);
    if hb.is_zero() || hb > ttl / 2 {
        return Err(Error::Usage(format!(
            "--heartbeat {} must be positive and at most half the lease (--ttl {}), so one lost renewal does not lose the lock",
            humantime::format_duration(hb),
            humantime::format_duration(ttl)
        )));
    }
    Ok(Some(hb))
}

impl Locker {
    /// Acquires `lock` and keeps it renewed every `heartbeat` (default: a third of the lease).
    pub async fn lease(&self, lock: &str, who: &Identity, opts: &AcquireOptions, heartbeat: Option<Duration>) -> Result<Lease> {
        let heartbeat = check_heartbeat(opts.ttl, heartbeat)?;
        let started = Instant::now();
        let grant = self.acquire(lock, who, opts).await?;
        let (state_tx, state) = watch::channel(LeaseState::Held);
        let (stop, stop_rx) = watch::channel(false);
        let task = heartbeat.zip(opts.ttl).map(|(every, ttl)| {
            let beat = Heartbeat {
                locker: self.clone(),
                lock: lock.to_string(),
                who: Holding {
                    owner: grant.owner.clone(),
                    token: Some(grant.token.clone()),
                },
                ttl,
                every,
                margin: opts.clock_margin,
                retention: opts.retention,
            };
            // The lease began no earlier than the acquisition did: measuring from before it
            // errs on the side of giving up too early, never too late.
            let valid_until = Instant::now().max(started) + ttl;
            tokio::spawn(beat.run(valid_until, state_tx, stop_rx))
        });
        Ok(Lease {
            locker: self.clone(),
            grant,
            state,
            stop,
            task,
            retention: opts.retention,
        })
    }

    /// Runs `f` while holding `lock`, handing it the fence. If the lease is lost, `f` is
    /// dropped (cancelled) and the result is `Error::LeaseLost`; otherwise the lock is released.
    pub async fn with_lock<F, Fut, T>(&self, lock: &str, who: &Identity, opts: &AcquireOptions, f: F) -> Result<T>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut lease = self.lease(lock, who, opts, None).await?;
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
    retention: Duration,
}

impl Heartbeat {
    async fn run(self, mut valid_until: Instant, state: watch::Sender<LeaseState>, mut stop: watch::Receiver<bool>) {
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
            // A renewal may wait for its request timeout (seconds); the lease does not. An
            // answer after the lease's end on our clock is no use: by then a taker may rightly
            // hold the lock, so the command must be stopped. A renewal sent already late (this
            // process was paused) gets a moment to say whether the lock is still ours.
            let deadline = valid_until.checked_sub(self.margin).unwrap_or(valid_until);
            let cutoff = valid_until.max(sent + self.every.min(LATE_ANSWER));
            let renewal = tokio::select! {
                biased;
                r = self.locker.renew(&self.lock, &self.who, Some(self.ttl), self.retention, false) => r,
                _ = tokio::time::sleep_until(cutoff) => Err(Error::Unavailable {
                    message: "no answer to the renewal".into(),
                    source: None,
                }),
            };
            match renewal {
                Ok(_) => {
                    valid_until = sent + self.ttl;
                    next = sent + self.every;
                }
                Err(Error::LeaseLost(msg)) => {
                    let _ = state.send(LeaseState::Lost(msg));
                    return;
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        let _ = state.send(LeaseState::Unknown(format!(
                            "could not renew lock {:?} in {} before its lease ended: {}",
                            self.lock,
                            self.locker.store().url(),
                            crate::report::chain(&e)
                        )));
                        return;
                    }
                    tracing::warn!("renewing lock {:?} failed, retrying: {}", self.lock, crate::report::chain(&e));
                    // Retry soon, but stop trying by the deadline.
                    next = (Instant::now() + self.every / 4).min(deadline);
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
        async move {
            loop {
                match rx.borrow_and_update().clone() {
                    LeaseState::Lost(m) => return Error::LeaseLost(m),
                    LeaseState::Unknown(m) => return Error::LeaseLost(format!("{m} (the lock may be someone else's now)")),
                    LeaseState::Held => {}
                }
                if rx.changed().await.is_err() {
                    // The heartbeat ended without a verdict (no lease end): never lost.
                    std::future::pending::<()>().await;
                }
            }
        }
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
        if !self.is_held() {
            return Ok(Released::NotHeld);
        }
        let who = Holding {
            owner: self.grant.owner.clone(),
            token: Some(self.grant.token.clone()),
        };
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
    fn heartbeat_must_fit_twice_in_the_lease() {
        let s = Duration::from_secs;
        assert_eq!(check_heartbeat(Some(s(30)), None).unwrap(), Some(s(10)));
        assert_eq!(check_heartbeat(Some(s(30)), Some(s(15))).unwrap(), Some(s(15)));
        assert!(
            check_heartbeat(Some(s(30)), Some(s(16)))
                .unwrap_err()
                .to_string()
                .contains("half the lease")
        );
        assert!(check_heartbeat(Some(s(30)), Some(s(0))).is_err());
        assert_eq!(check_heartbeat(None, Some(s(5))).unwrap(), None);
    }
}
