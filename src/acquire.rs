//! Taking a lock: the waiting loop. Each round decides on the record as last read (grant from
//! free, re-enter, take over, or wait), keeps our entry in the queue, and polls.
//!
//! The queue only ever decides *who may try*; every grant is still one conditional write on
//! Token and Rvn (or on a free record), so a wrong view of the queue can cost fairness but
//! never safety. See docs/design.md, "The queue and early takeover".

use std::time::{Duration, Instant};

use crate::ci::Identity;
use crate::ciapi::Verdict;
use crate::error::{Error, Result};
use crate::locker::{AcquireOptions, EAGER_ROUNDS, Grant, How, Locker, Wait, WaitReport, how_event, jitter, random_hex};
use crate::policy::{Judge, Takeover, Watch};
use crate::queue::{self, Me, QueueMode};
use crate::record::{Action, Event, EventKind, Grantee, Holder, Record, Waiter};
use crate::store::{Expect, Observed, State, WaiterUpdate, Written};

/// How often the head of the queue asks the CI server again about the same holder.
const CI_RECHECK: Duration = Duration::from_secs(30);

/// A write to try: its condition, how it grants, its History event, the entries it dequeues.
type Plan = (Expect, Option<How>, Option<Event>, Vec<String>);

/// Our place in the queue.
struct Place {
    /// Our key in `Waiters`.
    token: String,
    /// Our entry, once registered; its EnqueuedAt is fixed from then on, so a re-registration
    /// (after someone pruned us by mistake) keeps our place.
    entry: Option<Waiter>,
    /// When we last wrote it.
    written: Option<Instant>,
    /// How long entries may go unseen.
    window: Duration,
}

/// The CI server's last answer: about which holder token, when, what.
struct Asked {
    token: String,
    at: Instant,
    verdict: Verdict,
}

/// The pause before the next poll. The next two in line poll 0.6 to 1.1 retry intervals
/// apart (0.85 on average), so the head notices a release within half an interval on average
/// (the goal for handoffs) and the second is already quick when it becomes the head. Waiters
/// further back only need to notice that they moved up, and poll a third less often; with
/// queue traffic counted, every waiter stays near 35 store requests a minute at the default
/// interval (the goal is at most 40). Random spacing keeps waiters out of lockstep.
fn poll_pause(interval: Duration, ahead: usize) -> Duration {
    let spread = 0.6 + rand::random::<f64>() * 0.5;
    interval.mul_f64(if ahead <= 1 { spread } else { spread * 1.3 })
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The entry we would register now: after everyone already queued, so that arrival order
/// survives store-clock estimates that differ between runners by a second.
fn would_be(owner: &str, holder: &Holder, record: Option<&Record>, now: i64, window: Duration) -> Waiter {
    let after = record.and_then(|r| r.waiters.values().map(|w| w.enqueued_at.saturating_add(1)).max());
    Waiter {
        owner: owner.to_string(),
        enqueued_at: after.map_or(now, |a| a.max(now)),
        seen_at: now,
        ordinal: holder.ordinal,
        url: holder.url.clone(),
        window: Some(ms(window)),
    }
}

/// Sleeps `d`, or less if a signal arrives: its number.
async fn sleep_or_signal(d: Duration, cancel: &mut Option<tokio::sync::watch::Receiver<Option<i32>>>) -> Option<i32> {
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

fn signalled(cancel: &Option<tokio::sync::watch::Receiver<Option<i32>>>) -> Option<i32> {
    cancel.as_ref().and_then(|rx| *rx.borrow())
}

/// A queue write on the way out gets this long: an exit on a signal must not hang on the store.
const LEAVE_BOUND: Duration = Duration::from_secs(3);

impl Locker {
    fn judge<'a>(&self, opts: &'a AcquireOptions, watch: Option<&'a Watch>, ended: Option<&'a str>, force: bool) -> Judge<'a> {
        Judge {
            now: self.store().clock().now_ms(),
            margin: opts.clock_margin + self.store().clock().uncertainty(),
            force_after: opts.force_after,
            force: if force { opts.force.as_deref() } else { None },
            watch,
            mono_now: Instant::now(),
            pipeline_ended: ended,
        }
    }

    /// Writes our entry (register or refresh), pruning entries unseen for the window. Returns
    /// the record afterwards when the store knows it, standing in for this round's poll.
    async fn keep_place(&self, lock: &str, place: &mut Place, base: Option<&Observed>, window: Duration) -> Result<Option<Observed>> {
        let now = self.store().clock().now_ms();
        let Some(entry) = place.entry.as_mut() else {
            return Ok(None);
        };
        entry.seen_at = now;
        let update = WaiterUpdate {
            lock,
            base,
            set: Some((&place.token, entry)),
            remove: None,
            prune: Some(queue::Prune { now, window }),
        };
        let result = self.store().update_waiters(update).await?;
        // Counts as written only if it landed: one lost to concurrent writes is tried again
        // on the next poll rather than half a window later.
        let landed = match &result {
            Some(obs) => obs.record().and_then(|r| r.waiters.get(&place.token)).is_some_and(|w| w.seen_at == now),
            None => true,
        };
        if landed {
            place.written = Some(Instant::now());
        }
        Ok(result)
    }

    /// Leaves the queue (given up, superseded, or granted without dequeuing). Best effort:
    /// an entry left behind is pruned after the window.
    async fn leave(&self, lock: &str, place: &Place, base: Option<&Observed>) {
        if place.entry.is_none() {
            return;
        }
        let update = WaiterUpdate {
            lock,
            base,
            set: None,
            remove: Some(&place.token),
            prune: None,
        };
        match tokio::time::timeout(LEAVE_BOUND, self.store().update_waiters(update)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("leaving the queue of {lock:?} failed ({e}); the entry is pruned after the window"),
            Err(_) => tracing::debug!("leaving the queue of {lock:?} got no answer; the entry is pruned after the window"),
        }
    }

    /// Takes the lock for `who`, waiting as `opts` says.
    pub async fn acquire(&self, lock: &str, who: &Identity, opts: &AcquireOptions) -> Result<Grant> {
        let started = Instant::now();
        let deadline = match opts.wait {
            Wait::For(d) => Some(started + d),
            _ => None,
        };
        let mut seen: Option<Observed> = None;
        let mut watch: Option<Watch> = None;
        let mut polls = 0u32;
        let mut eager = 0u32;
        let mut last_report: Option<Instant> = None;
        let mut holder = who.holder.clone();
        holder.reason = opts.reason.clone().or(holder.reason);
        holder.ordinal = opts.ordinal.or(holder.ordinal);
        let mut place = Place {
            token: random_hex::<16>(),
            entry: None,
            written: None,
            window: queue::prune_window(opts.retry_interval, opts.prune_floor),
        };
        let mut asked: Option<Asked> = None;
        let mut api_failed = false;
        // Grant writes that got no answer, by token and how: if the record shows one, the
        // write landed and the grant is ours (and not "someone else with our owner").
        let mut in_doubt: Vec<(String, How)> = Vec::new();
        // Store failures in a row while waiting (see `ride_out`), and whether to read first.
        let mut failures = 0u32;
        let mut reread = false;
        let mut cancel = opts.cancel.clone();

        // A store failure while waiting is ridden out until our own --wait ends
        // (docs/design.md, "Leases in practice (v2)"): pause, then start the round again with a fresh read.
        macro_rules! ride {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => {
                        failures += 1;
                        // Only a store that has answered us is ridden out: one that never did
                        // is a wrong endpoint or a missing network, not a blip.
                        let answered = seen.is_some();
                        if let Some(give_up) = self
                            .ride_out(lock, e, opts, (answered, deadline), started, failures, &mut cancel)
                            .await
                        {
                            self.leave(lock, &place, None).await;
                            return Err(give_up);
                        }
                        reread = true;
                        continue;
                    }
                }
            };
        }

        loop {
            if let Some(sig) = signalled(&cancel) {
                self.leave(lock, &place, seen.as_ref()).await;
                return Err(interrupted(lock, &self.store().url(), sig));
            }
            if reread {
                seen = Some(ride!(self.store().read(lock, true).await));
                reread = false;
                failures = 0;
            }
            let clock = self.store().clock();
            let synced = clock.is_synced();
            let record = match seen.as_ref().map(|o| &o.state) {
                Some(State::Corrupt(why)) => return Err(self.corrupt(lock, why)),
                Some(State::Valid(r)) => Some(r.clone()),
                _ => None,
            };
            let now = clock.now_ms();
            // Others' entries stay live for the window plus what our clock estimate may be off.
            let window = place.window + clock.uncertainty();
            let my_entry = place
                .entry
                .clone()
                .unwrap_or_else(|| would_be(&who.owner, &holder, record.as_ref(), now, place.window));
            let me = Me {
                token: &place.token,
                entry: &my_entry,
            };

            let newer = record
                .as_ref()
                .filter(|_| opts.supersede)
                .and_then(|r| queue::superseded_by(r, &who.owner, holder.ordinal, now, window));
            if let Some(by) = newer {
                self.leave(lock, &place, seen.as_ref()).await;
                return Err(Error::Superseded(format!(
                    "lock {lock:?} in {}: a newer pipeline of this project supersedes {} (pipeline {}): {by}; skipping (--supersede)",
                    self.store().url(),
                    who.owner,
                    holder.ordinal.unwrap_or_default()
                )));
            }
            let ahead = record.as_ref().map(|r| queue::ahead(r, &me, opts.queue, now, window)).unwrap_or_default();
            let head = ahead.is_empty();

            // The head asks its CI server about a holder that no other rule lets it take yet.
            if let (Some(api), Some(r), true) = (&opts.ci_api, &record, head) {
                let other = !r.is_free() && r.owner.as_deref() != Some(who.owner.as_str());
                let token = r.token.clone().unwrap_or_default();
                let due = asked.as_ref().is_none_or(|a| a.token != token || a.at.elapsed() >= CI_RECHECK);
                if other && due && self.judge(opts, watch.as_ref(), None, false).takeover(r).is_none() {
                    let owner = r.owner.clone().unwrap_or_default();
                    let verdict = api.pipeline_state(&owner).await;
                    match &verdict {
                        Verdict::Ended(s) => {
                            tracing::info!("the pipeline of {owner} has ended ({s}) per the CI API")
                        }
                        Verdict::Running(s) => {
                            tracing::debug!("the pipeline of {owner} is {s} per the CI API")
                        }
                        Verdict::NotOurs => tracing::debug!("{owner} is not a pipeline on our CI server; judged by its lease only"),
                        // Once loudly (a token without API access would repeat it every time).
                        Verdict::Failed(why) if !api_failed => {
                            api_failed = true;
                            tracing::warn!("asking the CI API about {owner} failed, no early takeover: {why}")
                        }
                        Verdict::Failed(why) => tracing::debug!("CI API: {why}"),
                    }
                    asked = Some(Asked {
                        token,
                        at: Instant::now(),
                        verdict,
                    });
                }
            }
            let ended = match (&asked, &record) {
                (
                    Some(Asked {
                        token,
                        verdict: Verdict::Ended(s),
                        ..
                    }),
                    Some(r),
                ) if r.token.as_ref() == Some(token) => Some(s.as_str()),
                _ => None,
            };

            // Queue entries a grant removes in the same write: ours, and the dead ones.
            let dequeue = |r: &Record| {
                let mut d = queue::stale(r, &place.token, now, window);
                if r.waiters.contains_key(&place.token) {
                    d.push(place.token.clone());
                }
                d
            };
            // What to write, if anything.
            let plan: Option<Plan> = match &record {
                // Nothing read yet: one blind write, which the store refuses if anyone queues.
                None => Some((Expect::Vacant, None, how_event(EventKind::Acquired, &who.owner, None), Vec::new())),
                Some(r) if r.is_free() => head.then(|| (Expect::Vacant, None, how_event(EventKind::Acquired, &who.owner, None), dequeue(r))),
                // A grant write of ours whose answer was lost had landed after all.
                Some(r) if let Some((_, how)) = in_doubt.iter().find(|(t, _)| r.token.as_ref() == Some(t)) => {
                    let mut grant = self.grant(lock, r, how.clone(), polls);
                    grant.waited_ms = started.elapsed().as_millis() as u64;
                    if r.waiters.contains_key(&place.token) {
                        self.leave(lock, &place, seen.as_ref()).await;
                    }
                    return Ok(grant);
                }
                Some(r) if r.owner.as_deref().is_some_and(|o| opts.own_pipeline.iter().any(|p| p == o)) && !held_via_run(r) => {
                    self.leave(lock, &place, seen.as_ref()).await;
                    return Err(Error::Held(format!(
                        "lock {lock:?} in {} is held by this job's own pipeline ({}, fence {}, taken with `pipeline-lock acquire`, \
                         --scope pipeline); a job-scoped `run` would wait on itself. This job already runs under that lock: \
                         run the command directly, or give `run` a lock of its own (--lock NAME)",
                        self.store().url(),
                        r.owner.as_deref().unwrap_or("?"),
                        r.fence
                    )));
                }
                Some(r) if opts.reenter && r.owner.as_deref() == Some(&who.owner) => {
                    Some((Expect::Token(r.token.clone().unwrap_or_default()), Some(How::Reentered), None, Vec::new()))
                }
                Some(r) => {
                    let judge = self.judge(opts, watch.as_ref(), ended, true);
                    // Break-glass ignores the queue; every other takeover is the head's.
                    judge.takeover(r).filter(|t| head || matches!(t, Takeover::Forced(_))).map(|t| {
                        let kind = if matches!(t, Takeover::Forced(_)) {
                            EventKind::Forced
                        } else {
                            EventKind::TakenOver
                        };
                        let how = How::TookOver {
                            from: r.owner.clone().unwrap_or_default(),
                            why: t.why(),
                        };
                        let expect = Expect::TokenRvn {
                            token: r.token.clone().unwrap_or_default(),
                            rvn: r.rvn.clone(),
                        };
                        let event = how_event(kind, &who.owner, Some(t.why())).map(|e| Event { from: r.owner.clone(), ..e });
                        (expect, Some(how), event, dequeue(r))
                    })
                }
            };

            if let Some((expect, how, event, dequeue)) = plan {
                let reentered = how == Some(How::Reentered);
                let action = if reentered {
                    Action::Renew {
                        restamp: false,
                        raise_fence: None,
                    }
                } else {
                    Action::Grant(Grantee {
                        owner: who.owner.clone(),
                        token: random_hex::<16>(),
                        holder: holder.clone(),
                        dequeue,
                    })
                };
                if let Action::Grant(g) = &action {
                    in_doubt.push((g.token.clone(), how.clone().unwrap_or(How::Acquired)));
                }
                // Re-entry never shortens the grant's lease and never puts an end on a
                // grant without one (a later job's acquire with the default --ttl).
                let lease = match &record {
                    Some(r) if reentered => crate::policy::kept_lease(r, now, opts.ttl),
                    _ => opts.ttl,
                };
                let change = self.change(action, lease, opts.retention, event);
                match ride!(self.commit(lock, expect, seen.as_ref(), &change).await) {
                    Written::Done(r) => {
                        let r = if synced {
                            Some(r)
                        } else {
                            ride!(self.retime(lock, r, lease, opts.retention, !reentered).await)
                        };
                        if let Some(r) = r {
                            if r.waiters.contains_key(&place.token) {
                                self.leave(lock, &place, None).await;
                            }
                            let mut grant = self.grant(lock, &r, how.unwrap_or(How::Acquired), polls);
                            grant.waited_ms = started.elapsed().as_millis() as u64;
                            return Ok(grant);
                        }
                        seen = Some(ride!(self.store().read(lock, true).await));
                    }
                    Written::Conflict(obs) => seen = Some(obs),
                }
                eager += 1;
                if eager < EAGER_ROUNDS {
                    continue;
                }
            }
            eager = 0;

            // Held by someone else, queued behind others, or racing writers: wait and poll.
            if let Some(r) = &record {
                let queued = queue::live_count(r, &me, now, window) + 1;
                if opts.wait == Wait::No {
                    return Err(Error::Held(format!(
                        "lock {lock:?} in {} {}; --no-wait given",
                        self.store().url(),
                        blocker(r, &ahead, opts.queue)
                    )));
                }
                let give_up = opts.max_retries.is_some_and(|m| polls >= m) || deadline.is_some_and(|d| Instant::now() >= d);
                if give_up {
                    self.leave(lock, &place, seen.as_ref()).await;
                    return Err(Error::TimedOut(format!(
                        "gave up waiting for lock {lock:?} in {} after {} and {polls} polls: it {}; \
                         raise --wait/--max-retries, or set --force-after to take over stale locks",
                        self.store().url(),
                        humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                        blocker(r, &ahead, opts.queue)
                    )));
                }
                let judge = self.judge(opts, watch.as_ref(), None, false);
                let takeover_at = if r.is_free() { None } else { judge.takeover_at(r) };
                let due = last_report.is_none_or(|t| t.elapsed() >= opts.progress_every);
                if let (Some(progress), true) = (&opts.progress, due) {
                    last_report = Some(Instant::now());
                    progress(&WaitReport {
                        lock: lock.to_string(),
                        store: self.store().url(),
                        holder: r.clone(),
                        now: judge.now,
                        attempt: polls + 1,
                        waited: started.elapsed(),
                        takeover_at,
                        queue: opts.queue,
                        position: (opts.queue != QueueMode::None).then_some(ahead.len() + 1),
                        queued,
                        ahead: ahead.iter().map(|(_, w)| (w.owner.clone(), w.url.clone())).collect(),
                    });
                }
                if place.entry.is_none() {
                    // First conflict: join the queue now, before sleeping, so that our place
                    // follows our arrival. The write's answer is this round's poll.
                    place.entry = Some(my_entry.clone());
                    if let Some(obs) = ride!(self.keep_place(lock, &mut place, seen.as_ref(), window).await) {
                        seen = Some(obs);
                        continue;
                    }
                }
                let mut pause = poll_pause(opts.retry_interval, ahead.len());
                // Wake up right when a takeover becomes possible, or at the deadline.
                if let (Some(at), true) = (takeover_at, head) {
                    pause = pause.min(Duration::from_millis((at - judge.now).max(0) as u64 + 50));
                }
                if let Some(d) = deadline {
                    pause = pause.min(d.saturating_duration_since(Instant::now()));
                }
                if let Some(sig) = sleep_or_signal(pause, &mut cancel).await {
                    self.leave(lock, &place, seen.as_ref()).await;
                    return Err(interrupted(lock, &self.store().url(), sig));
                }
            } else if let Some(sig) = sleep_or_signal(jitter(Duration::from_millis(100)), &mut cancel).await {
                self.leave(lock, &place, seen.as_ref()).await;
                return Err(interrupted(lock, &self.store().url(), sig));
            }
            polls += 1;
            // Refresh our entry when due (or when it went missing); the write stands in for
            // the poll, so waiting costs one request a round either way.
            let missing = record.as_ref().is_some_and(|r| !r.waiters.contains_key(&place.token));
            let refresh = place.entry.is_some() && (missing || place.written.is_none_or(|t| t.elapsed() >= queue::refresh_every(place.window)));
            let window = place.window + clock.uncertainty();
            let refreshed = if refresh {
                ride!(self.keep_place(lock, &mut place, seen.as_ref(), window).await)
            } else {
                None
            };
            // The head reads consistently: a stale "held" would cost it a whole round.
            let obs = match refreshed {
                Some(obs) => obs,
                None => ride!(self.store().read(lock, head).await),
            };
            failures = 0;
            if let State::Valid(r) = &obs.state
                && !r.is_free()
            {
                Watch::observe(&mut watch, r, Instant::now());
            }
            seen = Some(obs);
        }
    }

    /// A store failure while waiting (docs/design.md, "Leases in practice (v2)"): unreachable,
    /// throttled or 5xx is ridden out with backoff until our own `--wait` (or
    /// `--max-retries`) runs out; anything else, `--no-wait`, and a store that has not
    /// answered once yet give up at once. Returns the error to give up with, or `None` after
    /// the pause.
    #[allow(clippy::too_many_arguments)]
    async fn ride_out(
        &self,
        lock: &str,
        err: Error,
        opts: &AcquireOptions,
        (answered, deadline): (bool, Option<Instant>),
        started: Instant,
        failures: u32,
        cancel: &mut Option<tokio::sync::watch::Receiver<Option<i32>>>,
    ) -> Option<Error> {
        if !matches!(err, Error::Unavailable { .. }) || opts.wait == Wait::No || !answered {
            return Some(err);
        }
        let out_of_tries = opts.max_retries.is_some_and(|m| failures > m.max(1));
        if out_of_tries || deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(Error::Unavailable {
                message: format!(
                    "gave up waiting for lock {lock:?} in {} after {}: the store kept failing",
                    self.store().url(),
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                ),
                source: Some(Box::new(err)),
            });
        }
        let mut pause = jitter(opts.retry_interval.saturating_mul(1 << failures.min(4)).min(Duration::from_secs(30)));
        if let Some(d) = deadline {
            pause = pause.min(d.saturating_duration_since(Instant::now()));
        }
        tracing::warn!(
            "lock {lock:?} in {}: the store is failing ({}); still waiting, next try in {}",
            self.store().url(),
            crate::report::chain(&err),
            humantime::format_duration(Duration::from_millis(pause.as_millis() as u64))
        );
        sleep_or_signal(pause, cancel)
            .await
            .map(|sig| interrupted(lock, &self.store().url(), sig))
    }
}

/// Was this grant made by `run` (which the pipeline's later jobs never share)?
fn held_via_run(r: &Record) -> bool {
    r.holder.as_ref().and_then(|h| h.via.as_deref()) == Some("run")
}

/// The error for a wait stopped by signal `sig` (the queue entry is gone by then).
fn interrupted(lock: &str, store: &str, sig: i32) -> Error {
    Error::Interrupted {
        signal: sig,
        message: format!("stopped waiting for lock {lock:?} in {store} on signal {sig}; left the queue"),
    }
}

/// What keeps us waiting, for messages: the holder, or the waiters ahead of a free lock.
fn blocker(r: &Record, ahead: &[(&String, &Waiter)], mode: QueueMode) -> String {
    if r.is_free() {
        let first = ahead.first().map(|(_, w)| w.owner.as_str()).unwrap_or("?");
        return format!(
            "is free but {} waiter(s) are ahead in the queue (--queue {}), first {first}",
            ahead.len(),
            mode.as_str()
        );
    }
    format!(
        "is held by {} (fence {}{})",
        r.owner.as_deref().unwrap_or("?"),
        r.fence,
        r.holder
            .as_ref()
            .and_then(|h| h.url.as_deref())
            .map(|u| format!(", {u}"))
            .unwrap_or_default()
    )
}
