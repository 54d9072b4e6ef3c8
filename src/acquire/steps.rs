//! The waiting loop's steps besides the decision (see [`super`]): the limits of the wait,
//! progress reports, the pause, the poll, our place in the queue, the exits, and riding out
//! store trouble.

use std::time::Duration;

use tokio::time::Instant;

use super::{Stop, Waiting, ride};
use crate::error::Occupant;
use crate::error::{Error, Result};
use crate::locker::{Wait, WaitReport, jitter};
use crate::policy::Watch;
use crate::queue::{self, Me, QueueMode};
use crate::record::{Record, Waiter};
use crate::store::{Observed, State, WaiterUpdate};

impl Waiting<'_> {
    /// Gives up when `--no-wait`, `--wait` or `--max-retries` say so.
    pub(super) async fn check_limits(&self, r: &Record, entry: &Waiter, now: i64, window: Duration) -> std::result::Result<(), Stop> {
        let (lock, opts) = (self.lock, self.opts);
        if opts.wait == Wait::No {
            let blocker = blocker(r, &self.ahead(r, entry, now, window), opts.queue);
            return Err(Stop::Exit(Error::Held {
                message: format!("lock {lock:?} in {} {blocker}; --no-wait given", self.store().url()),
                occupant: Occupant::of(lock, Some(r)),
            }));
        }
        let give_up = opts.max_retries.is_some_and(|m| self.polls >= m) || self.deadline.is_some_and(|d| Instant::now() >= d);
        if !give_up {
            return Ok(());
        }
        self.leave(true).await;
        Err(Stop::Exit(Error::TimedOut(format!(
            "gave up waiting for lock {lock:?} in {} after {} and {} polls: it {}; \
             raise --wait/--max-retries, or set --force-after to take over stale locks",
            self.store().url(),
            humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs())),
            self.polls,
            blocker(r, &self.ahead(r, entry, now, window), opts.queue)
        ))))
    }

    /// Reports progress on the first conflict, then every `--progress-every`.
    pub(super) fn report(&mut self, r: &Record, entry: &Waiter, now: i64, window: Duration) {
        let (Some(progress), true) = (
            &self.opts.progress,
            self.last_report.is_none_or(|t| t.elapsed() >= self.opts.progress_every),
        ) else {
            return;
        };
        self.last_report = Some(Instant::now());
        let judge = self.judge(false);
        let ahead = self.ahead(r, entry, now, window);
        let me = Me {
            token: &self.place.token,
            entry,
        };
        progress(&WaitReport {
            lock: self.lock.to_string(),
            store: self.store().url(),
            holder: r.clone(),
            now: judge.now,
            attempt: self.polls + 1,
            waited: self.started.elapsed(),
            takeover_at: self.takeover_at(r, &judge),
            queue: self.opts.queue,
            position: (self.opts.queue != QueueMode::None).then_some(ahead.len() + 1),
            queued: queue::live_count(r, &me, now, window) + 1,
            ahead: ahead.iter().map(|(_, w)| (w.owner.clone(), w.url.clone())).collect(),
            shared: self.opts.shared,
        });
    }

    /// The pause before the next poll: shortened to wake up right when a takeover becomes
    /// possible (for the head), and to end at the deadline.
    pub(super) fn poll_pause(&self, r: &Record, ahead: usize, head: bool) -> Duration {
        let judge = self.judge(false);
        let takeover_at = self.takeover_at(r, &judge);
        let base = crate::backoff::pause_base(self.opts.retry_interval, self.opts.backoff.as_ref(), self.polls);
        let mut pause = poll_pause(base, ahead);
        if let (Some(at), true) = (takeover_at, head) {
            pause = pause.min(Duration::from_millis((at - judge.now).max(0) as u64 + 50));
        }
        if let Some(d) = self.deadline {
            pause = pause.min(d.saturating_duration_since(Instant::now()));
        }
        pause
    }

    /// When a takeover becomes possible for us: the exclusive holder's; among shared holders,
    /// the first of them for a shared request (one slot is enough), the last for an
    /// exclusive one (it needs them all).
    pub(super) fn takeover_at(&self, r: &Record, judge: &crate::policy::Judge<'_>) -> Option<i64> {
        if r.is_free() {
            return None;
        }
        if r.owner.is_some() {
            return judge.takeover_at(r);
        }
        let each = r.holds().into_iter().map(|(k, _)| r.view_of(k).and_then(|v| judge.takeover_at(&v)));
        if self.opts.shared {
            each.flatten().min()
        } else {
            each.collect::<Option<Vec<i64>>>().and_then(|all| all.into_iter().max())
        }
    }

    /// Sleeps `d`, or stops the wait on a signal.
    pub(super) async fn pause(&mut self, d: Duration) -> std::result::Result<(), Stop> {
        match sleep_or_signal(d, &mut self.cancel).await {
            Some(sig) => Err(self.interrupted(sig).await),
            None => Ok(()),
        }
    }

    /// Reads the record again. Our queue entry is refreshed when due (or when it went
    /// missing); that write stands in for the poll, so waiting costs one request a round
    /// either way.
    pub(super) async fn poll(&mut self, record: Option<&Record>, head: bool) -> std::result::Result<(), Stop> {
        self.polls += 1;
        let place = &self.place;
        let missing = record.is_some_and(|r| !r.waiters.contains_key(&place.token));
        let due = place.written.is_none_or(|t| t.elapsed() >= queue::refresh_every(place.window));
        let window = place.window + self.store().clock().uncertainty();
        let refreshed = match place.entry.is_some() && (missing || due) {
            true => ride(self.keep_place(window).await)?,
            false => None,
        };
        // The head reads consistently: a stale "held" would cost it a whole round.
        let obs = match refreshed {
            Some(obs) => obs,
            None => ride(self.store().read(self.lock, head).await)?,
        };
        self.failures = 0;
        if let State::Valid(r) = &obs.state
            && !r.is_free()
        {
            Watch::observe(&mut self.watch, r, Instant::now());
        }
        self.seen = Some(obs);
        Ok(())
    }

    /// Writes our entry (register or refresh), pruning entries unseen for the window. Returns
    /// the record afterwards when the store knows it, standing in for this round's poll.
    pub(super) async fn keep_place(&mut self, window: Duration) -> Result<Option<Observed>> {
        let now = self.store().clock().now_ms();
        let Some(entry) = self.place.entry.as_mut() else {
            return Ok(None);
        };
        entry.seen_at = now;
        let update = WaiterUpdate {
            lock: self.lock,
            base: self.seen.as_ref(),
            set: Some((&self.place.token, entry)),
            remove: None,
            prune: Some(queue::Prune { now, window }),
        };
        let result = self.locker.store().update_waiters(update).await?;
        // Counts as written only if it landed: one lost to concurrent writes is tried again
        // on the next poll rather than half a window later.
        let landed = match &result {
            Some(obs) => obs
                .record()
                .and_then(|r| r.waiters.get(&self.place.token))
                .is_some_and(|w| w.seen_at == now),
            None => true,
        };
        if landed {
            self.place.written = Some(Instant::now());
        }
        Ok(result)
    }

    /// Leaves the queue (given up, superseded, or granted without dequeuing), on the record
    /// as last seen or (`with_base` false) on a fresh read. Best effort: an entry left behind
    /// is pruned after the window.
    pub(super) async fn leave(&self, with_base: bool) {
        if self.place.entry.is_none() {
            return;
        }
        let lock = self.lock;
        let update = WaiterUpdate {
            lock,
            base: self.seen.as_ref().filter(|_| with_base),
            set: None,
            remove: Some(&self.place.token),
            prune: None,
        };
        match tokio::time::timeout(LEAVE_BOUND, self.store().update_waiters(update)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("leaving the queue of {lock:?} failed ({e}); the entry is pruned after the window"),
            Err(_) => tracing::debug!("leaving the queue of {lock:?} got no answer; the entry is pruned after the window"),
        }
    }

    pub(super) async fn interrupted(&self, sig: i32) -> Stop {
        self.leave(true).await;
        Stop::Exit(interrupted(self.lock, &self.store().url(), sig))
    }

    pub(super) async fn superseded(&self, by: &str) -> Stop {
        self.leave(true).await;
        Stop::Exit(Error::Superseded(format!(
            "lock {:?} in {}: a newer pipeline of this project supersedes {} (pipeline {}): {by}; skipping (--supersede)",
            self.lock,
            self.store().url(),
            self.who.owner,
            self.holder.ordinal.unwrap_or_default()
        )))
    }

    /// The record was created with another N than ours: exit 78, naming both.
    pub(super) async fn wrong_slots(&self, stored: u32) -> Stop {
        self.leave(true).await;
        Stop::Exit(Error::Config(format!(
            "lock {:?} in {} has {stored} slot(s), fixed when its record was created, but this request asks for --slots {}; \
             pass --slots {stored}, or use another lock name for a lock of {} slot(s)",
            self.lock,
            self.store().url(),
            self.opts.slots,
            self.opts.slots
        )))
    }

    pub(super) async fn own_pipeline(&self, r: &Record) -> Stop {
        self.leave(true).await;
        Stop::Exit(Error::Held {
            message: format!(
                "lock {:?} in {} is held by this job's own pipeline ({}, fence {}, taken with `pipeline-lock acquire`, \
                 --scope pipeline); a job-scoped `run` would wait on itself. This job already runs under that lock: \
                 run the command directly, or give `run` a lock of its own (--lock NAME)",
                self.lock,
                self.store().url(),
                r.owner.as_deref().unwrap_or("?"),
                r.fence
            ),
            occupant: Occupant::of(self.lock, Some(r)),
        })
    }

    /// A store failure while waiting (docs/design.md, "Leases in practice (v2)"): unreachable,
    /// throttled or 5xx is ridden out with backoff until our own `--wait` (or
    /// `--max-retries`) runs out, then the next round starts with a fresh read; anything
    /// else, `--no-wait`, and a store that has not answered once yet give up at once (one
    /// that never did is a wrong endpoint or a missing network, not a blip).
    pub(super) async fn ride_out(&mut self, err: Error) -> Result<()> {
        self.failures += 1;
        let (lock, opts) = (self.lock, self.opts);
        let give_up = if !matches!(err, Error::Unavailable { .. }) || opts.wait == Wait::No || self.seen.is_none() {
            Some(err)
        } else if opts.max_retries.is_some_and(|m| self.failures > m.max(1)) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Error::Unavailable {
                message: format!(
                    "gave up waiting for lock {lock:?} in {} after {}: the store kept failing",
                    self.store().url(),
                    humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs()))
                ),
                source: Some(Box::new(err)),
            })
        } else {
            let mut pause = jitter(opts.retry_interval.saturating_mul(1 << self.failures.min(4)).min(Duration::from_secs(30)));
            if let Some(d) = self.deadline {
                pause = pause.min(d.saturating_duration_since(Instant::now()));
            }
            tracing::warn!(
                "lock {lock:?} in {}: the store is failing ({}); still waiting, next try in {}",
                self.store().url(),
                crate::report::chain(&err),
                humantime::format_duration(Duration::from_millis(pause.as_millis() as u64))
            );
            sleep_or_signal(pause, &mut self.cancel)
                .await
                .map(|sig| interrupted(lock, &self.store().url(), sig))
        };
        if let Some(e) = give_up {
            self.leave(false).await;
            return Err(e);
        }
        self.reread = true;
        Ok(())
    }
}

/// The pause before the next poll. The next two in line poll 0.6 to 1.1 retry intervals
/// apart (0.85 on average), so the head notices a release within half an interval on average
/// (the goal for handoffs) and the second is already quick when it becomes the head. Waiters
/// further back only need to notice that they moved up, and poll a third less often; with
/// queue traffic counted, every waiter stays near 35 store requests a minute at the default
/// interval (the goal is at most 40). Random spacing keeps waiters out of lockstep.
pub(super) fn poll_pause(interval: Duration, ahead: usize) -> Duration {
    let spread = 0.6 + rand::random::<f64>() * 0.5;
    interval.mul_f64(if ahead <= 1 { spread } else { spread * 1.3 })
}

/// Sleeps `d`, or less if a signal arrives: its number.
pub(super) async fn sleep_or_signal(d: Duration, cancel: &mut Option<tokio::sync::watch::Receiver<Option<i32>>>) -> Option<i32> {
    let Some(rx) = cancel.as_mut() else {
        tokio::time::sleep(d).await;
        return None;
    };
    if let Some(sig) = *rx.borrow_and_update() {
        return Some(sig);
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        changed = rx.changed() => match changed {
            Ok(()) => *rx.borrow(),
            // The sender is gone: no signal can come any more.
            Err(_) => {
                *cancel = None;
                None
            }
        },
    }
}

/// A queue write on the way out gets this long: an exit on a signal must not hang on the store.
const LEAVE_BOUND: Duration = Duration::from_secs(3);

/// The error for a wait stopped by signal `sig` (the queue entry is gone by then).
pub(super) fn interrupted(lock: &str, store: &str, sig: i32) -> Error {
    Error::Interrupted {
        signal: sig,
        message: format!("stopped waiting for lock {lock:?} in {store} on signal {sig}; left the queue"),
    }
}

/// What keeps us waiting, for messages: the holder, or the waiters ahead of a free lock.
pub(super) fn blocker(r: &Record, ahead: &[(&String, &Waiter)], mode: QueueMode) -> String {
    if r.is_free() {
        let first = ahead.first().map(|(_, w)| w.owner.as_str()).unwrap_or("?");
        return format!(
            "is free but {} waiter(s) are ahead in the queue (--queue {}), first {first}",
            ahead.len(),
            mode.as_str()
        );
    }
    let url = r
        .holder
        .as_ref()
        .and_then(|h| h.url.as_deref())
        .map(|u| format!(" at {u}"))
        .unwrap_or_default();
    format!("is held by {}{url}", r.holders_text())
}
