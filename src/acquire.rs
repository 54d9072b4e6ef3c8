//! Taking a lock: the waiting loop. Each round decides on the record as last read (grant from
//! free, re-enter, take over, or wait), keeps our entry in the queue, and polls.
//!
//! The queue only ever decides *who may try*; every grant is still one conditional write on
//! Token and Rvn (or on a free record), so a wrong view of the queue can cost fairness but
//! never safety. See docs/design.md, "The queue and early takeover".

use crate::clock::ms;
use std::time::Duration;

use tokio::time::Instant;

use crate::ci::Identity;
use crate::ciapi::Verdict;
use crate::error::{Error, Result};
use crate::locker::{AcquireOptions, EAGER_ROUNDS, Grant, How, Locker, Wait, Wrote, jitter, random_hex};
use crate::policy::{self, Asker, Judge, Plan, Watch};
use crate::queue::{self, Me};
use crate::record::{Action, Event, EventKind, Grantee, Holder, Record, SharedOp, Waiter};
use crate::store::{Expect, Observed, State, Written};

mod steps;

/// How often the head of the queue asks the CI server again about the same holder.
const CI_RECHECK: Duration = Duration::from_secs(30);

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

/// The CI server's last answer about one holder: its token, when, what.
struct Asked {
    token: String,
    at: Instant,
    verdict: Verdict,
}

/// The entry we would register now: after everyone already queued, so that arrival order
/// survives store-clock estimates that differ between runners by a second.
fn would_be(owner: &str, holder: &Holder, record: Option<&Record>, now: i64, window: Duration, shared: bool) -> Waiter {
    let after = record.and_then(|r| r.waiters.values().map(|w| w.enqueued_at.saturating_add(1)).max());
    Waiter {
        owner: owner.to_string(),
        enqueued_at: after.map_or(now, |a| a.max(now)),
        seen_at: now,
        ordinal: holder.ordinal,
        url: holder.url.clone(),
        window: Some(ms(window)),
        shared,
    }
}

fn signalled(cancel: &Option<tokio::sync::watch::Receiver<Option<i32>>>) -> Option<i32> {
    cancel.as_ref().and_then(|rx| *rx.borrow())
}

impl Locker {
    /// Takes the lock for `who`, waiting as `opts` says: round after round, each deciding by
    /// [`crate::policy::plan`] on the record as last read.
    pub async fn acquire(&self, lock: &str, who: &Identity, opts: &AcquireOptions) -> Result<Grant> {
        let mut waiting = Waiting::new(self, lock, who, opts);
        loop {
            match waiting.round().await {
                Ok(Some(grant)) => return Ok(grant),
                Ok(None) => {}
                Err(Stop::Exit(e)) => return Err(e),
                Err(Stop::Store(e)) => waiting.ride_out(e).await?,
            }
        }
    }
}

/// Why a round ended without a grant.
enum Stop {
    /// A store request failed: ridden out (see [`Waiting::ride_out`]) or given up on.
    Store(Error),
    /// The wait is over, with this error.
    Exit(Error),
}

/// A store request's error, to be ridden out.
fn ride<T>(result: Result<T>) -> std::result::Result<T, Stop> {
    result.map_err(Stop::Store)
}

type Cancel = Option<tokio::sync::watch::Receiver<Option<i32>>>;

/// The waiting loop's state from one round to the next.
struct Waiting<'a> {
    locker: &'a Locker,
    lock: &'a str,
    who: &'a Identity,
    opts: &'a AcquireOptions,
    /// The holder details our grant writes.
    holder: Holder,
    started: Instant,
    deadline: Option<Instant>,
    /// The record as last read (or as a write answered).
    seen: Option<Observed>,
    watch: Option<Watch>,
    polls: u32,
    /// Decisions in a row without a pause.
    eager: u32,
    last_report: Option<Instant>,
    place: Place,
    /// The CI server's last answer about each holder it was asked about.
    asked: Vec<Asked>,
    /// Has asking the CI API failed once (warned about)?
    api_failed: bool,
    /// Grant writes that got no answer, by token and how: if the record shows one, the
    /// write landed and the grant is ours (and not "someone else with our owner").
    in_doubt: Vec<(String, How)>,
    /// Store failures in a row while waiting (see `ride_out`), and whether to read first.
    failures: u32,
    reread: bool,
    cancel: Cancel,
}

/// The holder details a grant for `who` writes: its CI identity, with `--reason` and
/// `--ordinal` over what the CI said.
pub(crate) fn holder_of(who: &Identity, opts: &AcquireOptions) -> Holder {
    let mut holder = who.holder.clone();
    holder.reason = opts.reason.clone().or(holder.reason);
    holder.ordinal = opts.ordinal.or(holder.ordinal);
    holder
}

impl<'a> Waiting<'a> {
    fn new(locker: &'a Locker, lock: &'a str, who: &'a Identity, opts: &'a AcquireOptions) -> Waiting<'a> {
        let started = Instant::now();
        let holder = holder_of(who, opts);
        Waiting {
            locker,
            lock,
            who,
            opts,
            holder,
            started,
            deadline: match opts.wait {
                Wait::For(d) => Some(started + d),
                _ => None,
            },
            seen: None,
            watch: None,
            polls: 0,
            eager: 0,
            last_report: None,
            place: Place {
                token: random_hex::<16>(),
                entry: None,
                written: None,
                // A backed-off waiter polls as seldom as its cap: its entry lives that long.
                window: queue::prune_window(crate::backoff::longest(opts.retry_interval, opts.backoff.as_ref()), opts.prune_floor),
            },
            asked: Vec::new(),
            api_failed: false,
            in_doubt: Vec::new(),
            failures: 0,
            // A shared grant is planned on what is there (its fence and slot follow from it).
            reread: opts.shared,
            cancel: opts.cancel.clone(),
        }
    }

    fn store(&self) -> &dyn crate::store::Store {
        self.locker.store().as_ref()
    }

    /// One round: decide on the record as last read, write if there is something to try,
    /// else wait, keep our queue place and poll. `Ok(None)`: go on with the next round.
    async fn round(&mut self) -> std::result::Result<Option<Grant>, Stop> {
        if let Some(sig) = signalled(&self.cancel) {
            return Err(self.interrupted(sig).await);
        }
        if self.reread {
            self.seen = Some(ride(self.store().read(self.lock, true).await)?);
            self.reread = false;
            self.failures = 0;
        }
        let clock = self.store().clock();
        let synced = clock.is_synced();
        let record = match self.seen.as_ref().map(|o| &o.state) {
            Some(State::Corrupt(why)) => return Err(Stop::Exit(self.locker.corrupt(self.lock, why))),
            Some(State::Valid(r)) => Some(r.clone()),
            _ => None,
        };
        let now = clock.now_ms();
        // Others' entries stay live for the window plus what our clock estimate may be off.
        let window = self.place.window + clock.uncertainty();
        let entry = (self.place.entry.clone())
            .unwrap_or_else(|| would_be(&self.who.owner, &self.holder, record.as_ref(), now, self.place.window, self.opts.shared));
        let head = record.as_ref().is_none_or(|r| self.ahead(r, &entry, now, window).is_empty());

        let mut plan = self.plan(record.as_ref(), &entry, now, window);
        // The CI server's answer can only matter to a plan that is not an exit already.
        if !matches!(plan, Plan::Superseded(_)) && self.ask_ci(record.as_ref(), head).await {
            plan = self.plan(record.as_ref(), &entry, now, window);
        }
        match (plan, &record) {
            (Plan::Wait, _) => {}
            (Plan::Adopt(how), Some(r)) => {
                // A grant write of ours whose answer was lost had landed after all.
                let token = self
                    .in_doubt
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .find(|t| r.token.as_deref() == Some(*t) || r.shared.values().any(|h| h.token == *t));
                let grant = self.granted(r, token.unwrap_or_default(), how);
                if r.waiters.contains_key(&self.place.token) {
                    self.leave(true).await;
                }
                return Ok(Some(grant));
            }
            (Plan::Superseded(by), _) => return Err(self.superseded(&by).await),
            (Plan::OwnPipeline, Some(r)) => return Err(self.own_pipeline(r).await),
            (Plan::WrongSlots(n), _) => return Err(self.wrong_slots(n).await),
            (write, _) => {
                if let Some(grant) = self.write(record.as_ref(), write, now, synced).await? {
                    return Ok(Some(grant));
                }
                self.eager += 1;
                if self.eager < EAGER_ROUNDS {
                    return Ok(None);
                }
            }
        }
        self.eager = 0;

        // Held by someone else, queued behind others, or racing writers: wait and poll.
        if let Some(r) = &record {
            self.check_limits(r, &entry, now, window).await?;
            self.report(r, &entry, now, window);
            if self.place.entry.is_none() {
                // First conflict: join the queue now, before sleeping, so that our place
                // follows our arrival. The write's answer is this round's poll.
                self.place.entry = Some(entry.clone());
                if let Some(obs) = ride(self.keep_place(window).await)? {
                    self.seen = Some(obs);
                    return Ok(None);
                }
            }
            let ahead = self.ahead(r, &entry, now, window).len();
            self.pause(self.poll_pause(r, ahead, head)).await?;
        } else {
            self.pause(jitter(Duration::from_millis(100))).await?;
        }
        self.poll(record.as_ref(), head).await?;
        Ok(None)
    }

    /// The live entries ahead of `entry` (ours, or the one we would register).
    fn ahead<'r>(&self, r: &'r Record, entry: &Waiter, now: i64, window: Duration) -> Vec<(&'r String, &'r Waiter)> {
        let me = Me {
            token: &self.place.token,
            entry,
        };
        queue::ahead(r, &me, self.opts.queue, now, window)
    }

    /// The takeover rules' inputs now; `force` as given, or (asking whether any other rule
    /// allows a takeover) not.
    fn judge(&self, force: bool) -> Judge<'_> {
        Judge {
            now: self.store().clock().now_ms(),
            margin: self.opts.clock_margin + self.store().clock().uncertainty(),
            force_after: self.opts.force_after,
            force: if force { self.opts.force.as_deref() } else { None },
            watch: self.watch.as_ref(),
            mono_now: Instant::now(),
            pipeline_ended: &[],
        }
    }

    /// This round's decision (pure, see [`crate::policy::plan`]).
    fn plan(&self, record: Option<&Record>, entry: &Waiter, now: i64, window: Duration) -> Plan {
        // The CI server's verdicts count only for the Tokens they were about (the judge
        // matches them to the holder, or to each shared hold).
        let ended: Vec<(String, String)> = (self.asked.iter())
            .filter_map(|a| match &a.verdict {
                Verdict::Ended(s) => Some((a.token.clone(), s.clone())),
                _ => None,
            })
            .collect();
        let asker = Asker {
            owner: &self.who.owner,
            me: Me {
                token: &self.place.token,
                entry,
            },
            now,
            queue: self.opts.queue,
            window,
            supersede: self.opts.supersede,
            ordinal: self.holder.ordinal,
            reenter: self.opts.reenter,
            own_pipeline: &self.opts.own_pipeline,
            in_doubt: &self.in_doubt,
            slots: self.opts.slots,
            shared: self.opts.shared,
        };
        let mut judge = self.judge(true);
        judge.pipeline_ended = &ended;
        policy::plan(record, &asker, &judge)
    }

    /// The head asks its CI server about a holder that no other rule lets it take yet (the
    /// exclusive one, or the first such shared hold), at most every `CI_RECHECK` per holder
    /// token. Returns whether it asked.
    async fn ask_ci(&mut self, record: Option<&Record>, head: bool) -> bool {
        let (Some(api), Some(r), true) = (self.opts.ci_api.clone(), record, head) else {
            return false;
        };
        let holders: Vec<Record> = match r.owner {
            Some(_) => vec![r.clone()],
            None => r.holds().iter().filter_map(|(k, _)| r.view_of(*k)).collect(),
        };
        let judge = self.judge(false);
        let asked = &self.asked;
        let due = |token: &str| asked.iter().find(|a| a.token == token).is_none_or(|a| a.at.elapsed() >= CI_RECHECK);
        let Some(holder) = holders.into_iter().find(|h| {
            h.owner.as_deref() != Some(self.who.owner.as_str()) && due(h.token.as_deref().unwrap_or_default()) && judge.takeover(h).is_none()
        }) else {
            return false;
        };
        let (owner, token) = (holder.owner.clone().unwrap_or_default(), holder.token.clone().unwrap_or_default());
        let verdict = api.pipeline_state(&owner).await;
        match &verdict {
            Verdict::Ended(s) => tracing::info!("the pipeline of {owner} has ended ({s}) per the CI API"),
            Verdict::Running(s) => tracing::debug!("the pipeline of {owner} is {s} per the CI API"),
            Verdict::NotOurs => tracing::debug!("{owner} is not a pipeline on our CI server; judged by its lease only"),
            // Once loudly (a token without API access would repeat it every time).
            Verdict::Failed(why) if !self.api_failed => {
                self.api_failed = true;
                tracing::warn!("asking the CI API about {owner} failed, no early takeover: {why}")
            }
            Verdict::Failed(why) => tracing::debug!("CI API: {why}"),
        }
        // Verdicts about holders no longer there are forgotten.
        let live: Vec<&str> = std::iter::once(r.token.as_deref().unwrap_or_default())
            .chain(r.shared.values().map(|h| h.token.as_str()))
            .collect();
        self.asked.retain(|a| a.token != token && live.contains(&a.token.as_str()));
        self.asked.push(Asked {
            token,
            at: Instant::now(),
            verdict,
        });
        true
    }

    /// Tries a planned grant or re-entry (one conditional write). The grant when it landed;
    /// else the record the store answered with is what we saw.
    async fn write(&mut self, record: Option<&Record>, plan: Plan, now: i64, synced: bool) -> std::result::Result<Option<Grant>, Stop> {
        let (expect, how, event, action, token, evict) = match plan {
            Plan::Reenter { token, slot: None } => {
                let renew = Action::Renew {
                    restamp: false,
                    raise_fence: None,
                };
                (Expect::Token(token.clone()), How::Reentered, None, renew, token, false)
            }
            Plan::Reenter { token, slot: Some(slot) } => {
                let version = Expect::Rvn(record.map(|r| r.rvn.clone()).unwrap_or_default());
                (version, How::Reentered, None, Action::Shared(SharedOp::Renew { slot }), token, false)
            }
            Plan::Grant {
                expect,
                how,
                event,
                dequeue,
                slot,
                evict,
            } => {
                let grantee = Grantee {
                    owner: self.who.owner.clone(),
                    token: random_hex::<16>(),
                    holder: self.holder.clone(),
                    dequeue,
                };
                let token = grantee.token.clone();
                self.in_doubt.push((token.clone(), how.clone()));
                let action = match slot {
                    Some(slot) => Action::Shared(SharedOp::Grant { slot, grantee }),
                    None => Action::Grant(grantee),
                };
                (expect, how, event, action, token, evict)
            }
            _ => return Ok(None),
        };
        let reentered = how == How::Reentered;
        let shared = matches!(action, Action::Shared(_));
        // Re-entry never shortens the grant's lease and never puts an end on a grant without
        // one (a later job's acquire with the default --ttl).
        let held = record.and_then(|r| match &action {
            Action::Shared(SharedOp::Renew { slot }) => r.view_of(*slot),
            _ => Some(r.clone()),
        });
        let lease = match held {
            Some(r) if reentered => policy::kept_lease(&r, now, self.opts.ttl),
            _ => self.opts.ttl,
        };
        let (lock, opts) = (self.lock, self.opts);
        // A grant after a wait says how long it waited: the lock's timeline shows the waits.
        let waited = (self.polls > 0).then(|| self.started.elapsed().as_millis() as u64);
        let event = event.map(|e| Event {
            waited: waited.filter(|_| e.event.is_grant()),
            ..e
        });
        let mut change = self.locker.change(action, lease, opts.retention, event);
        change.slots = opts.slots;
        change.evict = evict;
        if let (true, Some(r)) = (evict, record) {
            // The grant's event names the first evicted holder; the others get their own.
            change.evicted = r
                .holds()
                .iter()
                .skip(1)
                .map(|(_, h)| Event {
                    event: EventKind::Released,
                    owner: h.owner.clone(),
                    fence: None,
                    at: change.now,
                    by: Some(self.who.owner.clone()),
                    why: Some("a stale shared hold, taken over with the others by an exclusive grant".into()),
                    from: None,
                    waited: None,
                })
                .collect();
        }
        match ride(self.locker.commit(lock, expect, self.seen.as_ref(), &change).await)? {
            Written::Done(r) => {
                // A shared write was planned on a read, so on the store's clock already.
                let r = match synced || shared {
                    true => Some(r),
                    false => ride(
                        self.locker
                            .retime(lock, r, lease, opts.retention, if reentered { Wrote::Renewal } else { Wrote::Grant })
                            .await,
                    )?,
                };
                if let Some(r) = r {
                    if r.waiters.contains_key(&self.place.token) {
                        self.leave(false).await;
                    }
                    return Ok(Some(self.granted(&r, &token, how)));
                }
                self.seen = Some(ride(self.store().read(lock, true).await)?);
            }
            Written::Conflict(obs) => self.seen = Some(obs),
        }
        Ok(None)
    }

    fn granted(&self, r: &Record, token: &str, how: How) -> Grant {
        let mut grant = self.locker.grant(self.lock, r, Some(token), how, self.polls);
        grant.waited_ms = self.started.elapsed().as_millis() as u64;
        grant
    }
}
