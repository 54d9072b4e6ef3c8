//! Each round's decision of the waiting loop (docs/design.md, rule 4, and "The queue and
//! early takeover"): a pure function of the record as last read, who asks, and the takeover
//! rules' [`Judge`], so every branch is tested without a store or a clock.

use std::time::Duration;

use super::{Judge, Takeover};
use crate::locker::{How, how_event};
use crate::queue::{self, Me, QueueMode};
use crate::record::{Event, EventKind, Record};
use crate::store::Expect;

/// Who asks, as the waiting loop knows it: the inputs of [`plan`] besides the record and the
/// judge.
#[derive(Debug, Clone)]
pub struct Asker<'a> {
    /// Our owner string.
    pub owner: &'a str,
    /// Our queue entry, registered or the one we would register now.
    pub me: Me<'a>,
    /// Store ms the queue is judged at: the round's, as our entry was made (the takeover
    /// rules go by the judge's own `now`, taken after any CI API call).
    pub now: i64,
    /// `--queue`.
    pub queue: QueueMode,
    /// How long others' entries stay live: the prune window widened by our clock's uncertainty.
    pub window: Duration,
    /// `--supersede`.
    pub supersede: bool,
    /// Our pipeline number.
    pub ordinal: Option<u64>,
    /// May a grant of our owner be re-entered (see `AcquireOptions::reenter`)?
    pub reenter: bool,
    /// Owners that are this job's own pipeline (see `AcquireOptions::own_pipeline`).
    pub own_pipeline: &'a [String],
    /// Our grant writes that got no answer, by token and how they granted.
    pub in_doubt: &'a [(String, How)],
    /// The lock's N as we ask for it (`--slots`).
    pub slots: u32,
    /// A shared request (`--shared`).
    pub shared: bool,
}

/// One round's decision of the waiting loop, on the record as last read.
#[derive(Debug, Clone, PartialEq)]
// One lives per round, by value; a Box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Plan {
    /// Write a grant to a new token: from free, or a takeover.
    Grant {
        /// The write's condition.
        expect: Expect,
        /// How it grants.
        how: How,
        /// Its History event.
        event: Option<Event>,
        /// The queue entries it removes in the same write: ours, and the dead ones.
        dequeue: Vec<String>,
        /// A shared grant: the slot it takes. `None`: an exclusive grant.
        slot: Option<u32>,
        /// It replaces every current holder (each judged stale, or `--force`).
        evict: bool,
    },
    /// Renew our owner's grant under its token: same fence, lease never shortened.
    Reenter {
        /// The grant's token.
        token: String,
        /// Its slot, for a shared hold.
        slot: Option<u32>,
    },
    /// The record was created with another N (`--slots`): exit 78, naming both.
    WrongSlots(u32),
    /// A grant write of ours whose answer was lost had landed after all: the grant is ours.
    Adopt(How),
    /// Held via `acquire` by this job's own pipeline: `run` would wait on itself (exit 73).
    OwnPipeline,
    /// A newer pipeline of this project waits for or holds the lock (`--supersede`, exit 74): by whom.
    Superseded(String),
    /// Nothing to write: wait and poll.
    Wait,
}

/// Was this grant made by `run` (which the pipeline's later jobs never share)?
pub fn held_via_run(r: &Record) -> bool {
    r.holder.as_ref().and_then(|h| h.via.as_deref()) == Some("run")
}

/// What the waiting loop does with `record` (`None`: nothing read yet, or absent), in this
/// order: a newer pipeline supersedes us; a record of another N is refused; a free lock goes to
/// the head of the queue; a grant write of ours that landed is ours; our own pipeline's
/// `acquire` grant stops `run`; our owner's grant is re-entered; else a takeover the judge
/// allows (the head's only, except `--force`, which ignores the queue), or wait. Shared
/// requests go by [`plan_shared`]. The queue only decides who may try: every grant is still
/// one conditional write (docs/design.md, rule 4).
pub fn plan(record: Option<&Record>, asker: &Asker<'_>, judge: &Judge<'_>) -> Plan {
    let acquired = || how_event(EventKind::Acquired, asker.owner, None);
    let Some(r) = record else {
        // One blind write, which the store refuses if anyone queues (a shared one is planned
        // on a read, and creates the record).
        return Plan::Grant {
            expect: Expect::Vacant,
            how: How::Acquired,
            event: acquired(),
            dequeue: Vec::new(),
            slot: asker.shared.then_some(1),
            evict: false,
        };
    };
    let (now, window) = (asker.now, asker.window);
    if let Some(by) = Some(r)
        .filter(|_| asker.supersede)
        .and_then(|r| queue::superseded_by(r, asker.owner, asker.ordinal, now, window))
    {
        return Plan::Superseded(by);
    }
    if r.slot_count() != asker.slots {
        return Plan::WrongSlots(r.slot_count());
    }
    let ahead = queue::ahead(r, &asker.me, asker.queue, now, window);
    let head = ahead.is_empty();
    let dequeue = || {
        let mut d = queue::stale(r, asker.me.token, now, window);
        if r.waiters.contains_key(asker.me.token) {
            d.push(asker.me.token.to_string());
        }
        d
    };
    if r.is_free() && asker.shared {
        // The shared branch decides a free record as any other: the lowest slot, beside shared
        // requests queued ahead while slots remain, never past an exclusive one.
        return plan_shared(r, asker, judge, &ahead, dequeue());
    }
    if r.is_free() {
        if !head {
            return Plan::Wait;
        }
        return Plan::Grant {
            expect: Expect::Vacant,
            how: How::Acquired,
            event: acquired(),
            dequeue: dequeue(),
            slot: None,
            evict: false,
        };
    }
    // Every grant token the record shows, looked through again for each write in doubt (one
    // iterator shared by the search would be used up by the first write that did not land,
    // and a later one that did would go unnoticed).
    let tokens: Vec<&String> = std::iter::once(r.token.as_ref())
        .flatten()
        .chain(r.shared.values().map(|h| &h.token))
        .collect();
    if let Some((_, how)) = asker.in_doubt.iter().find(|(t, _)| tokens.contains(&t)) {
        return Plan::Adopt(how.clone());
    }
    if r.owner.as_deref().is_some_and(|o| asker.own_pipeline.iter().any(|p| p == o)) && !held_via_run(r) {
        return Plan::OwnPipeline;
    }
    if asker.reenter && r.owner.as_deref() == Some(asker.owner) {
        return Plan::Reenter {
            token: r.token.clone().unwrap_or_default(),
            slot: None,
        };
    }
    if asker.shared || r.owner.is_none() {
        return plan_shared(r, asker, judge, &ahead, dequeue());
    }
    let Some(t) = judge.takeover(r).filter(|t| head || matches!(t, Takeover::Forced(_))) else {
        return Plan::Wait;
    };
    taking_over(
        r,
        asker,
        &t,
        Expect::TokenRvn {
            token: r.token.clone().unwrap_or_default(),
            rvn: r.rvn.clone(),
        },
    )
    .with(None, false, dequeue())
}

/// A takeover grant from the holder `from` (the exclusive one, or a shared hold's view).
fn taking_over(from: &Record, asker: &Asker<'_>, t: &Takeover, expect: Expect) -> Plan {
    let kind = if matches!(t, Takeover::Forced(_)) {
        EventKind::Forced
    } else {
        EventKind::TakenOver
    };
    Plan::Grant {
        expect,
        how: How::TookOver {
            from: from.owner.clone().unwrap_or_default(),
            why: t.why(),
        },
        event: how_event(kind, asker.owner, Some(t.why())).map(|e| Event {
            from: from.owner.clone(),
            ..e
        }),
        dequeue: Vec::new(),
        slot: None,
        evict: false,
    }
}

impl Plan {
    /// A grant plan with its slot, eviction and queue entries set.
    fn with(self, slot: Option<u32>, evict: bool, dequeue: Vec<String>) -> Plan {
        match self {
            Plan::Grant { expect, how, event, .. } => Plan::Grant {
                expect,
                how,
                event,
                dequeue,
                slot,
                evict,
            },
            other => other,
        }
    }
}

/// The plan where shared holds are involved, on a record that is not free: a shared request
/// beside shared holders (a free slot, else a stale hold's slot), or over a stale exclusive
/// holder; an exclusive request over shared holders that are all stale. Writes on a record
/// that was read are conditional on its version, which pins every holder's Token and version.
fn plan_shared(r: &Record, asker: &Asker<'_>, judge: &Judge<'_>, ahead: &[(&String, &crate::record::Waiter)], dequeue: Vec<String>) -> Plan {
    let head = ahead.is_empty();
    let version = Expect::Rvn(r.rvn.clone());
    let allowed = |view: &Record| judge.takeover(view).filter(|t| head || matches!(t, Takeover::Forced(_)));
    if !asker.shared {
        // Exclusive: only over shared holds that may all be taken over, in one write.
        let views: Vec<Record> = r.holds().iter().filter_map(|(k, _)| r.view_of(*k)).collect();
        let verdicts: Option<Vec<Takeover>> = views.iter().map(allowed).collect();
        return match (verdicts, views.first()) {
            (Some(ts), Some(first)) if !ts.is_empty() => taking_over(first, asker, &ts[0], version).with(None, true, dequeue),
            _ => Plan::Wait,
        };
    }
    if r.owner.is_some() {
        // Shared over an exclusive holder: as an exclusive takeover, then the slot is ours.
        return match allowed(r) {
            Some(t) => {
                let expect = Expect::TokenRvn {
                    token: r.token.clone().unwrap_or_default(),
                    rvn: r.rvn.clone(),
                };
                taking_over(r, asker, &t, expect).with(Some(1), true, dequeue)
            }
            None => Plan::Wait,
        };
    }
    if asker.reenter
        && let Some((k, h)) = r.holds().into_iter().find(|(_, h)| h.owner == asker.owner)
    {
        return Plan::Reenter {
            token: h.token.clone(),
            slot: Some(k),
        };
    }
    // Never past an exclusive request queued ahead; beside shared ones while slots remain.
    if ahead.iter().any(|(_, w)| !w.shared) {
        return Plan::Wait;
    }
    let free = (r.slot_count() as usize).saturating_sub(r.shared.len());
    if let Some(k) = r.free_slot().filter(|_| ahead.len() < free) {
        return Plan::Grant {
            expect: version,
            how: How::Acquired,
            event: how_event(EventKind::Acquired, asker.owner, None),
            dequeue,
            slot: Some(k),
            evict: false,
        };
    }
    // No free slot: the lowest stale hold, if the head may take it.
    for (k, _) in r.holds() {
        let Some(view) = r.view_of(k) else { continue };
        if let Some(t) = allowed(&view) {
            return taking_over(&view, asker, &t, version).with(Some(k), false, dequeue);
        }
    }
    Plan::Wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{held_as, judge};
    use crate::record::{Holder, Waiter};

    const OWNER: &str = "gitlab:h/p/pipelines/9";

    fn waiter(owner: &str, enqueued_at: i64) -> Waiter {
        Waiter {
            owner: owner.into(),
            enqueued_at,
            seen_at: 50_000,
            ordinal: None,
            url: None,
            window: None,
            shared: false,
        }
    }

    fn held_by(owner: &str, lease_end: Option<i64>) -> Record {
        held_as(owner, 0, 0, lease_end)
    }

    /// Plans for OWNER with queue token "me", entry enqueued at `enqueued_at`.
    fn plan_at<'x>(record: Option<&Record>, judge: &Judge<'_>, enqueued_at: i64, tune: impl FnOnce(&mut Asker<'x>)) -> Plan {
        let entry: &'x Waiter = Box::leak(Box::new(waiter(OWNER, enqueued_at)));
        let mut asker = Asker {
            owner: OWNER,
            me: Me { token: "me", entry },
            now: judge.now,
            queue: QueueMode::Fifo,
            window: Duration::from_secs(30),
            supersede: false,
            ordinal: None,
            reenter: true,
            own_pipeline: &[],
            in_doubt: &[],
            slots: 1,
            shared: false,
        };
        tune(&mut asker);
        plan(record, &asker, judge)
    }

    fn is_grant(p: &Plan, want: Expect) -> bool {
        matches!(p, Plan::Grant { expect, .. } if *expect == want)
    }

    #[test]
    fn nothing_read_yet_is_one_blind_grant() {
        let p = plan_at(None, &judge(60_000), 60_000, |_| {});
        assert!(is_grant(&p, Expect::Vacant), "{p:?}");
        assert!(matches!(p, Plan::Grant { how: How::Acquired, ref dequeue, .. } if dequeue.is_empty()));
    }

    #[test]
    fn a_free_lock_goes_to_the_head_of_the_fifo_only() {
        let mut free = Record::vacant("l");
        free.waiters.insert("early".into(), waiter("gitlab:h/p/pipelines/1", 10_000));
        // Someone queued before us: wait.
        assert_eq!(plan_at(Some(&free), &judge(60_000), 20_000, |_| {}), Plan::Wait);
        // We are the head (registered): grant, dequeuing ourselves and the dead entries.
        free.waiters.insert("me".into(), waiter(OWNER, 5_000));
        free.waiters.insert(
            "dead".into(),
            Waiter {
                seen_at: 1_000,
                ..waiter("gitlab:h/p/pipelines/2", 1)
            },
        );
        let p = plan_at(Some(&free), &judge(60_000), 5_000, |_| {});
        let Plan::Grant { expect, dequeue, .. } = p else { panic!("{p:?}") };
        assert_eq!(expect, Expect::Vacant);
        assert!(
            dequeue.contains(&"me".to_string()) && dequeue.contains(&"dead".to_string()),
            "{dequeue:?}"
        );
        // With --queue none nobody is ahead.
        free.waiters.remove("me");
        let p = plan_at(Some(&free), &judge(60_000), 20_000, |a| a.queue = QueueMode::None);
        assert!(is_grant(&p, Expect::Vacant), "{p:?}");
    }

    #[test]
    fn our_owner_re_enters_unless_we_are_run() {
        let r = held_by(OWNER, Some(i64::MAX / 2));
        assert_eq!(
            plan_at(Some(&r), &judge(0), 0, |_| {}),
            Plan::Reenter {
                token: "t".into(),
                slot: None
            }
        );
        // `run` never re-enters: a live grant of our owner is waited for.
        assert_eq!(plan_at(Some(&r), &judge(0), 0, |a| a.reenter = false), Plan::Wait);
    }

    #[test]
    fn our_own_pipeline_stops_run_at_once_unless_run_holds_it() {
        let pipeline: &'static [String] = Box::leak(Box::new(["gitlab:h/p/pipelines/9".to_string()]));
        let mut r = held_by("gitlab:h/p/pipelines/9", Some(i64::MAX / 2));
        let as_run = |a: &mut Asker<'_>, pipeline: &'static [String]| {
            a.owner = "gitlab:h/p/pipelines/9/jobs/4";
            a.reenter = false;
            a.own_pipeline = pipeline;
        };
        assert_eq!(plan_at(Some(&r), &judge(0), 0, |a| as_run(a, pipeline)), Plan::OwnPipeline);
        // Another job's `run` of the same pipeline holds it: wait for it.
        r.holder = Some(Holder {
            via: Some("run".into()),
            ..Holder::default()
        });
        assert_eq!(plan_at(Some(&r), &judge(0), 0, |a| as_run(a, pipeline)), Plan::Wait);
    }

    #[test]
    fn a_grant_write_that_landed_unanswered_is_adopted() {
        let r = held_by(OWNER, Some(i64::MAX / 2));
        let in_doubt = [("t".to_string(), How::Acquired)];
        // Even where re-entry is refused: the grant is this process's own.
        let p = plan_at(Some(&r), &judge(0), 0, |a| {
            a.reenter = false;
            a.in_doubt = &in_doubt;
        });
        assert_eq!(p, Plan::Adopt(How::Acquired));
        // Two writes in doubt, the first of which never landed: the second is still found.
        let both = [("lost".to_string(), How::Acquired), ("t".to_string(), How::Acquired)];
        let p = plan_at(Some(&r), &judge(0), 0, |a| {
            a.reenter = false;
            a.in_doubt = &both;
        });
        assert_eq!(p, Plan::Adopt(How::Acquired));
        let other = [("other-token".to_string(), How::Acquired)];
        assert_eq!(
            plan_at(Some(&r), &judge(0), 0, |a| {
                a.reenter = false;
                a.in_doubt = &other;
            }),
            Plan::Wait
        );
    }

    #[test]
    fn a_takeover_is_the_heads_after_the_lease_end_plus_margin() {
        let mut r = held_by("gitlab:h/p/pipelines/1", Some(60_000));
        assert_eq!(plan_at(Some(&r), &judge(62_000), 0, |_| {}), Plan::Wait);
        let p = plan_at(Some(&r), &judge(62_001), 0, |_| {});
        let Plan::Grant { expect, how, event, .. } = p else { panic!("{p:?}") };
        assert_eq!(
            expect,
            Expect::TokenRvn {
                token: "t".into(),
                rvn: "v1".into()
            }
        );
        assert!(matches!(how, How::TookOver { ref from, .. } if from == "gitlab:h/p/pipelines/1"));
        let event = event.unwrap();
        assert_eq!(
            (event.event, event.from.as_deref()),
            (EventKind::TakenOver, Some("gitlab:h/p/pipelines/1"))
        );
        // Not the head: someone queued before us takes it.
        r.waiters.insert("early".into(), waiter("gitlab:h/p/pipelines/2", 1));
        assert_eq!(plan_at(Some(&r), &judge(62_001), 10, |_| {}), Plan::Wait);
        // An ended pipeline (per the CI API) is taken before its lease ends.
        let mut j = judge(0);
        let ended = [(r.token.clone().unwrap(), "failed".to_string())];
        j.pipeline_ended = &ended;
        r.waiters.clear();
        assert!(matches!(plan_at(Some(&r), &j, 0, |_| {}), Plan::Grant { .. }));
    }

    #[test]
    fn force_ignores_the_queue() {
        let mut r = held_by("gitlab:h/p/pipelines/1", Some(i64::MAX / 2));
        r.waiters.insert("early".into(), waiter("gitlab:h/p/pipelines/2", 1));
        let mut j = judge(0);
        j.force = Some("incident 7");
        let p = plan_at(Some(&r), &j, 10, |_| {});
        let Plan::Grant { how, event, .. } = p else { panic!("{p:?}") };
        assert!(matches!(how, How::TookOver { ref why, .. } if why.contains("incident 7")));
        assert_eq!(event.unwrap().event, EventKind::Forced);
    }

    #[test]
    fn a_newer_pipeline_supersedes_before_anything_else() {
        let mut r = held_by(OWNER, Some(i64::MAX / 2));
        r.waiters.insert(
            "newer".into(),
            Waiter {
                ordinal: Some(12),
                ..waiter("gitlab:h/p/pipelines/12", 1)
            },
        );
        let p = plan_at(Some(&r), &judge(50_000), 0, |a| {
            a.supersede = true;
            a.ordinal = Some(9);
        });
        assert!(matches!(p, Plan::Superseded(ref by) if by.contains("gitlab:h/p/pipelines/12")), "{p:?}");
        // Without --supersede: our owner re-enters.
        assert_eq!(
            plan_at(Some(&r), &judge(50_000), 0, |a| a.ordinal = Some(9)),
            Plan::Reenter {
                token: "t".into(),
                slot: None
            }
        );
    }

    /// A pool of `n` with shared holds `(slot, owner, lease end)`.
    fn pool(n: u32, holds: &[(u32, &str, i64)]) -> Record {
        let mut r = Record::vacant("l");
        r.rvn = "v1".into();
        r.fence = 10;
        r.slots = Some(n);
        for (k, owner, end) in holds {
            r.shared.insert(
                k.to_string(),
                crate::record::Hold {
                    owner: owner.to_string(),
                    token: format!("t{k}"),
                    fence: 5 + *k as u64,
                    rvn: "h".into(),
                    acquired_at: 0,
                    renewed_at: 0,
                    lease_expires_at: Some(*end),
                    holder: None,
                },
            );
        }
        r
    }

    fn shared(n: u32) -> impl FnOnce(&mut Asker<'_>) {
        move |a| {
            a.slots = n;
            a.shared = true;
        }
    }

    #[test]
    fn a_shared_request_takes_the_lowest_free_slot_on_the_version_read() {
        let r = pool(3, &[(1, "a", 90_000), (3, "c", 90_000)]);
        let p = plan_at(Some(&r), &judge(50_000), 50_000, shared(3));
        assert!(
            matches!(p, Plan::Grant { slot: Some(2), evict: false, ref expect, .. } if *expect == Expect::Rvn("v1".into())),
            "{p:?}"
        );
        // Nothing read yet: one write that creates the record, slot 1.
        let p = plan_at(None, &judge(50_000), 50_000, shared(3));
        assert!(
            matches!(p, Plan::Grant { slot: Some(1), ref expect, .. } if *expect == Expect::Vacant),
            "{p:?}"
        );
    }

    #[test]
    fn a_full_pool_waits_until_a_holder_is_stale_then_takes_only_its_slot() {
        let r = pool(2, &[(1, "a", 90_000), (2, "b", 40_000)]);
        assert_eq!(plan_at(Some(&r), &judge(41_000), 0, shared(2)), Plan::Wait, "inside the margin");
        let p = plan_at(Some(&r), &judge(43_000), 0, shared(2));
        match p {
            Plan::Grant {
                slot, evict, expect, how, ..
            } => {
                assert_eq!((slot, evict, expect), (Some(2), false, Expect::Rvn("v1".into())));
                assert!(matches!(how, How::TookOver { ref from, .. } if from == "b"), "{how:?}");
            }
            other => panic!("expected a takeover of slot 2, got {other:?}"),
        }
    }

    #[test]
    fn another_n_is_refused_before_anything_else() {
        let r = pool(3, &[]);
        assert_eq!(plan_at(Some(&r), &judge(0), 0, shared(2)), Plan::WrongSlots(3));
        assert_eq!(plan_at(Some(&r), &judge(0), 0, |_| {}), Plan::WrongSlots(3));
        let mutex = held_by("x", None);
        assert_eq!(plan_at(Some(&mutex), &judge(0), 0, shared(4)), Plan::WrongSlots(1));
    }

    #[test]
    fn an_exclusive_request_waits_for_every_shared_holder_and_may_evict_only_all_stale() {
        let live = pool(3, &[(1, "a", 90_000), (2, "b", 40_000)]);
        let n3 = |a: &mut Asker<'_>| a.slots = 3;
        assert_eq!(plan_at(Some(&live), &judge(50_000), 0, n3), Plan::Wait);
        let stale = pool(3, &[(1, "a", 40_000), (2, "b", 40_000)]);
        let p = plan_at(Some(&stale), &judge(50_000), 0, n3);
        assert!(
            matches!(p, Plan::Grant { slot: None, evict: true, ref expect, .. } if *expect == Expect::Rvn("v1".into())),
            "{p:?}"
        );
    }

    #[test]
    fn a_waiting_exclusive_request_holds_back_shared_ones_behind_it() {
        let mut r = pool(3, &[(1, "a", 90_000)]);
        r.waiters.insert("w".into(), waiter("writer", 10_000));
        // We queued after the writer: a slot is free, but we wait.
        assert_eq!(plan_at(Some(&r), &judge(50_000), 20_000, shared(3)), Plan::Wait);
        // A shared waiter ahead does not hold us back while slots remain for both.
        r.waiters.get_mut("w").unwrap().shared = true;
        assert!(matches!(
            plan_at(Some(&r), &judge(50_000), 20_000, shared(3)),
            Plan::Grant { slot: Some(2), .. }
        ));
        // On a free record too: an exclusive waiter ahead is the head.
        let mut free = pool(3, &[]);
        free.waiters.insert("w".into(), waiter("writer", 10_000));
        assert_eq!(plan_at(Some(&free), &judge(50_000), 20_000, shared(3)), Plan::Wait);
    }

    #[test]
    fn a_shared_request_over_a_stale_exclusive_holder_evicts_it_by_token_and_version() {
        let mut r = held_by("x", Some(40_000));
        r.slots = Some(3);
        let p = plan_at(Some(&r), &judge(50_000), 0, shared(3));
        let want = Expect::TokenRvn {
            token: "t".into(),
            rvn: "v1".into(),
        };
        assert!(
            matches!(p, Plan::Grant { slot: Some(1), evict: true, ref expect, .. } if *expect == want),
            "{p:?}"
        );
        let live = {
            let mut r = held_by("x", Some(90_000));
            r.slots = Some(3);
            r
        };
        assert_eq!(plan_at(Some(&live), &judge(50_000), 0, shared(3)), Plan::Wait);
    }

    #[test]
    fn our_owner_re_enters_its_shared_hold() {
        let r = pool(2, &[(2, OWNER, 90_000)]);
        assert_eq!(
            plan_at(Some(&r), &judge(50_000), 0, shared(2)),
            Plan::Reenter {
                token: "t2".into(),
                slot: Some(2)
            }
        );
    }
}
