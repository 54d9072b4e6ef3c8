//! The contract of the `Store` trait, at library level, on every store: the in-memory one,
//! the file store, DynamoDB Local, moto's DynamoDB and moto's S3 (`on_every_library_store!`;
//! the server stores print a skip line without their server, `scripts/test` starts them).
//! Each condition (`Expect`) both where it holds (`Written::Done` with the record as the store
//! now holds it) and where it does not (`Written::Conflict` with what the store really holds,
//! left unchanged); the blind grant and the queue; waiter bookkeeping, which never touches the
//! holder; corrupt records; fences; `list`. A new store passes this suite before anything
//! else (docs/design.md, "Adding a store").

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pipeline_lock::queue::{self, Prune, QueueMode};
use pipeline_lock::record::{Action, Change, Event, EventKind, Grantee, Holder, Record, SharedOp, Waiter};
use pipeline_lock::store::{Expect, Observed, State, Store, WaiterUpdate, Write, Written};
use support::library::{Junk, Subject};

const LEASE_MS: i64 = 60_000;
const RETENTION_S: i64 = 30 * 86_400;
/// A fence above any a record created now can have (store ms are about 1.7e12).
const BIG_FENCE: u64 = 1_000_000_000_000_000;

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A holder-side change on the store's clock, made the way the locker makes them: a grant
/// logs `acquired`, a release `released`, a renewal nothing.
fn change(store: &dyn Store, action: Action) -> Change {
    let now = store.clock().now_ms();
    let (lease_expires_at, event) = match &action {
        Action::Grant(g) => (Some(now + LEASE_MS), Some((EventKind::Acquired, g.owner.clone()))),
        Action::Renew { .. } => (Some(now + LEASE_MS), None),
        Action::Release => (None, Some((EventKind::Released, "holder".to_string()))),
        Action::Shared(SharedOp::Grant { grantee, .. }) => (Some(now + LEASE_MS), Some((EventKind::Acquired, grantee.owner.clone()))),
        Action::Shared(SharedOp::Renew { .. }) => (Some(now + LEASE_MS), None),
        Action::Shared(SharedOp::Release { .. }) => (None, Some((EventKind::Released, "holder".to_string()))),
    };
    Change {
        action,
        rvn: token(),
        now,
        lease_expires_at,
        expires_at: Some(lease_expires_at.unwrap_or(now) / 1000 + RETENTION_S),
        fence_floor: (now + 1_000) as u64,
        event: event.map(|(event, owner)| Event {
            event,
            owner,
            fence: None,
            at: now,
            by: None,
            why: Some("contract".into()),
            from: None,
            waited: None,
        }),
        slots: 1,
        evict: false,
        evicted: Vec::new(),
    }
}

/// The same change logged as `kind` (a takeover, a break-glass release).
fn logged(mut c: Change, kind: EventKind) -> Change {
    c.event.as_mut().expect("a change with an event").event = kind;
    c
}

fn granting(owner: &str, token: &str) -> Action {
    granting_dequeue(owner, token, &[])
}

fn granting_dequeue(owner: &str, token: &str, dequeue: &[&str]) -> Action {
    Action::Grant(Grantee {
        owner: owner.into(),
        token: token.into(),
        holder: Holder {
            ci: Some("local".into()),
            reason: Some("contract".into()),
            pid: Some(42),
            ..Holder::default()
        },
        dequeue: dequeue.iter().map(|t| t.to_string()).collect(),
    })
}

fn renewing() -> Action {
    Action::Renew {
        restamp: false,
        raise_fence: None,
    }
}

fn waiter(owner: &str, enqueued_at: i64, seen_at: i64) -> Waiter {
    Waiter {
        owner: owner.into(),
        enqueued_at,
        seen_at,
        ordinal: Some(7),
        url: Some("https://ci.invalid/p/7".into()),
        window: Some(30_000),
        shared: false,
    }
}

async fn read(store: &dyn Store, lock: &str) -> Observed {
    store
        .read(lock, true)
        .await
        .unwrap_or_else(|e| panic!("{}: read {lock:?}: {e}", store.url()))
}

async fn valid(store: &dyn Store, lock: &str) -> Record {
    match read(store, lock).await.state {
        State::Valid(r) => r,
        other => panic!("{}: {lock:?} should hold a valid record, holds {other:?}", store.url()),
    }
}

async fn write(store: &dyn Store, lock: &str, expect: Expect, base: Option<&Observed>, change: &Change) -> Written {
    let w = Write { lock, expect, base, change };
    store.write(w).await.unwrap_or_else(|e| panic!("{}: write to {lock:?}: {e}", store.url()))
}

/// Two reads found the same thing. Corrupt records are compared by kind only: DynamoDB's
/// reason names whichever bad attribute its parser met first, in no fixed order. (That a
/// refused write left one unchanged shows later: `Exact` on the first read still lands.)
#[track_caller]
fn assert_same(a: &State, b: &State, what: &str) {
    match (a, b) {
        (State::Absent, State::Absent) | (State::Corrupt(_), State::Corrupt(_)) => {}
        (State::Valid(x), State::Valid(y)) => assert_eq!(x, y, "{what}"),
        _ => panic!("{what}: {a:?} is not {b:?}"),
    }
}

/// A write that happened: its answer is the record the store now holds, with the change's Rvn.
async fn done(store: &dyn Store, lock: &str, written: Written, what: &str) -> Record {
    match written {
        Written::Done(r) => {
            assert_eq!(r, valid(store, lock).await, "{}: {what}: Done carries the record as stored", store.url());
            r
        }
        Written::Conflict(o) => panic!("{}: {what}: refused; the store holds {:?}", store.url(), o.state),
    }
}

/// A refused write: it says what the store holds (`before`), and left it alone.
async fn refused(store: &dyn Store, lock: &str, written: Written, before: &State, what: &str) -> Observed {
    let what = format!("{}: {what}", store.url());
    match written {
        Written::Done(r) => panic!("{what}: should have been refused, wrote {r:?}"),
        Written::Conflict(o) => {
            assert_same(&o.state, before, &format!("{what}: the conflict shows what is there"));
            assert_same(&read(store, lock).await.state, before, &format!("{what}: nothing changed"));
            o
        }
    }
}

/// A waiter update; what it answers as the record afterwards is what the store holds.
async fn queue_write(
    store: &dyn Store,
    lock: &str,
    base: Option<&Observed>,
    set: Option<(&str, &Waiter)>,
    remove: Option<&str>,
    prune: Option<Prune>,
) -> Option<Observed> {
    let update = WaiterUpdate {
        lock,
        base,
        set,
        remove,
        prune,
    };
    let answer = (store.update_waiters(update).await).unwrap_or_else(|e| panic!("{}: waiter update on {lock:?}: {e}", store.url()));
    if let Some(o) = &answer {
        let now = read(store, lock).await;
        assert_same(
            &o.state,
            &now.state,
            &format!("{}: update_waiters answers the record as it is", store.url()),
        );
    }
    answer
}

/// Everything but the queue: what waiter bookkeeping must never change.
fn holder_side(r: &Record) -> Record {
    Record {
        waiters: BTreeMap::new(),
        ..r.clone()
    }
}

fn entries(list: &[(&str, &Waiter)]) -> BTreeMap<String, Waiter> {
    list.iter().map(|(t, w)| (t.to_string(), (*w).clone())).collect()
}

async fn vacant_grants_from_absent_and_from_a_free_tombstone_never_over_a_holder(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("vacant");
    // Blind, over absent: the record is created with every holder field, its fence from the floor.
    let ta = token();
    let c = change(st, granting("alice", &ta));
    let a = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "a blind grant over absent").await;
    assert_eq!(
        (a.owner.as_deref(), a.token.as_deref(), a.fence, a.rvn.as_str()),
        (Some("alice"), Some(ta.as_str()), c.fence_floor + 1, c.rvn.as_str())
    );
    assert_eq!(
        (a.acquired_at, a.renewed_at, a.lease_expires_at, a.expires_at),
        (Some(c.now), Some(c.now), c.lease_expires_at, c.expires_at)
    );
    assert_eq!(a.holder.as_ref().and_then(|h| h.reason.as_deref()), Some("contract"));
    assert_eq!(
        a.history.iter().map(|e| (e.event, e.fence)).collect::<Vec<_>>(),
        vec![(EventKind::Acquired, Some(a.fence))]
    );

    // Over a holder: refused, blind or on a read, and the holder is left alone.
    let held = read(st, &lock).await;
    for base in [None, Some(&held)] {
        let c = change(st, granting("bob", &token()));
        let w = write(st, &lock, Expect::Vacant, base, &c).await;
        refused(st, &lock, w, &held.state, "Vacant over a holder").await;
    }

    // Over a free tombstone: granted, on a read and blind, the fence counted on.
    let c = change(st, Action::Release);
    let free = done(st, &lock, write(st, &lock, Expect::Token(ta), None, &c).await, "release").await;
    assert!(free.is_free() && free.fence == a.fence, "{free:?}");
    let tomb = read(st, &lock).await;
    let tb = token();
    let c = change(st, granting("bob", &tb));
    let b = done(
        st,
        &lock,
        write(st, &lock, Expect::Vacant, Some(&tomb), &c).await,
        "Vacant over a tombstone read",
    )
    .await;
    assert_eq!((b.owner.as_deref(), b.fence, b.history.len()), (Some("bob"), a.fence + 1, 3));
    let c = change(st, Action::Release);
    done(st, &lock, write(st, &lock, Expect::Token(tb), None, &c).await, "release").await;
    let c = change(st, granting("carol", &token()));
    let carol = done(
        st,
        &lock,
        write(st, &lock, Expect::Vacant, None, &c).await,
        "a blind grant over a tombstone",
    )
    .await;
    assert_eq!((carol.owner.as_deref(), carol.fence), (Some("carol"), a.fence + 2));

    // On a read of absent that is stale (someone created the record since): refused.
    let lock = s.lock("vacant-stale");
    let absent = read(st, &lock).await;
    assert!(matches!(absent.state, State::Absent), "{absent:?}");
    let c = change(st, granting("dave", &token()));
    done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "a blind grant over absent").await;
    let now = read(st, &lock).await;
    let c = change(st, granting("eve", &token()));
    let w = write(st, &lock, Expect::Vacant, Some(&absent), &c).await;
    refused(st, &lock, w, &now.state, "Vacant on a stale read of absent").await;
}

async fn the_blind_grant_is_refused_while_someone_is_queued(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("blind");
    let ta = token();
    let c = change(st, granting("alice", &ta));
    done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    let now = st.clock().now_ms();
    let entry = waiter("wendy", now, now);
    queue_write(st, &lock, Some(&read(st, &lock).await), Some(("q1", &entry)), None, None).await;
    let c = change(st, Action::Release);
    let free = done(st, &lock, write(st, &lock, Expect::Token(ta), None, &c).await, "release").await;
    // Release keeps the queue (docs/design.md, rule 5).
    assert_eq!(free.waiters, entries(&[("q1", &entry)]), "{free:?}");

    // Blind: refused, queue and all left alone. Decided on a read that saw the queue: granted.
    let tomb = read(st, &lock).await;
    let tb = token();
    let c = change(st, granting("bob", &tb));
    let w = write(st, &lock, Expect::Vacant, None, &c).await;
    refused(st, &lock, w, &tomb.state, "a blind grant while someone is queued").await;
    let b = done(
        st,
        &lock,
        write(st, &lock, Expect::Vacant, Some(&tomb), &c).await,
        "a grant that saw the queue",
    )
    .await;
    assert_eq!((b.owner.as_deref(), b.fence, &b.waiters), (Some("bob"), free.fence + 1, &free.waiters));

    // A grant removes the entries it dequeues in the same write; then blind grants work again.
    let c = change(st, Action::Release);
    done(st, &lock, write(st, &lock, Expect::Token(tb), None, &c).await, "release").await;
    let tomb = read(st, &lock).await;
    let tw = token();
    let c = change(st, granting_dequeue("wendy", &tw, &["q1"]));
    let w = done(st, &lock, write(st, &lock, Expect::Vacant, Some(&tomb), &c).await, "the head's grant").await;
    assert!(w.waiters.is_empty() && w.fence == free.fence + 2, "{w:?}");
    let c = change(st, Action::Release);
    done(st, &lock, write(st, &lock, Expect::Token(tw), None, &c).await, "release").await;
    let c = change(st, granting("carol", &token()));
    done(
        st,
        &lock,
        write(st, &lock, Expect::Vacant, None, &c).await,
        "a blind grant, nobody queued",
    )
    .await;
}

async fn owner_and_token_hold_for_the_holder_only(s: Subject) {
    let st = &*s.store;
    // Nobody's on absent: refused, and no record is created.
    let never = s.lock("never");
    let absent = read(st, &never).await;
    for expect in [Expect::Owner("alice".into()), Expect::Token("t".into())] {
        for base in [None, Some(&absent)] {
            let c = change(st, renewing());
            let w = write(st, &never, expect.clone(), base, &c).await;
            refused(st, &never, w, &State::Absent, &format!("{expect:?} on absent")).await;
        }
    }

    let lock = s.lock("holder");
    let ta = token();
    let c = change(st, granting("alice", &ta));
    let a = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    // Each holds for the holder, on a read or without: a renewal keeps the grant, moves the Rvn.
    for expect in [Expect::Owner("alice".into()), Expect::Token(ta.clone())] {
        for on_read in [false, true] {
            let before = read(st, &lock).await;
            let c = change(st, renewing());
            let what = format!("renew under {expect:?} (on a read: {on_read})");
            let w = write(st, &lock, expect.clone(), on_read.then_some(&before), &c).await;
            let r = done(st, &lock, w, &what).await;
            assert_eq!(
                (r.fence, &r.token, &r.owner, r.acquired_at, &r.holder, &r.history),
                (a.fence, &a.token, &a.owner, a.acquired_at, &a.holder, &a.history),
                "{what}"
            );
            assert_eq!(
                (r.rvn.as_str(), r.renewed_at, r.lease_expires_at),
                (c.rvn.as_str(), Some(c.now), c.lease_expires_at),
                "{what}"
            );
        }
    }
    // And for nobody else.
    let before = read(st, &lock).await;
    for expect in [Expect::Owner("bob".into()), Expect::Token(token())] {
        for base in [None, Some(&before)] {
            let c = change(st, Action::Release);
            let w = write(st, &lock, expect.clone(), base, &c).await;
            refused(st, &lock, w, &before.state, &format!("{expect:?} over alice's grant")).await;
        }
    }
    // A tombstone is nobody's.
    let c = change(st, Action::Release);
    done(
        st,
        &lock,
        write(st, &lock, Expect::Owner("alice".into()), None, &c).await,
        "release by owner",
    )
    .await;
    let tomb = read(st, &lock).await;
    for expect in [Expect::Owner("alice".into()), Expect::Token(ta.clone())] {
        for base in [None, Some(&tomb)] {
            let c = change(st, renewing());
            let w = write(st, &lock, expect.clone(), base, &c).await;
            refused(st, &lock, w, &tomb.state, &format!("{expect:?} over a tombstone")).await;
        }
    }
}

async fn token_rvn_and_rvn_hold_at_the_version_read_only(s: Subject) {
    let st = &*s.store;
    let never = s.lock("never");
    for expect in [
        Expect::TokenRvn {
            token: "t".into(),
            rvn: "r".into(),
        },
        Expect::Rvn("r".into()),
    ] {
        let c = change(st, Action::Release);
        let w = write(st, &never, expect.clone(), None, &c).await;
        refused(st, &never, w, &State::Absent, &format!("{expect:?} on absent")).await;
    }

    let lock = s.lock("versions");
    let ta = token();
    let c = change(st, granting("alice", &ta));
    let a = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    let seen = read(st, &lock).await;
    // The holder renewed after the taker's read (a new Rvn): the taker loses, on its read or not.
    let c = change(st, renewing());
    let renewed = done(st, &lock, write(st, &lock, Expect::Token(ta.clone()), None, &c).await, "renew").await;
    let now = read(st, &lock).await;
    let stale = Expect::TokenRvn {
        token: ta.clone(),
        rvn: a.rvn.clone(),
    };
    for base in [None, Some(&seen)] {
        let c = change(st, granting("bob", &token()));
        let w = write(st, &lock, stale.clone(), base, &c).await;
        refused(st, &lock, w, &now.state, "TokenRvn at an Rvn renewed since").await;
        let c = change(st, Action::Release);
        let w = write(st, &lock, Expect::Rvn(a.rvn.clone()), base, &c).await;
        refused(st, &lock, w, &now.state, "Rvn renewed since").await;
    }
    // At the version read: the takeover lands, one fence up.
    let tb = token();
    let c = logged(change(st, granting("bob", &tb)), EventKind::TakenOver);
    let current = Expect::TokenRvn {
        token: ta.clone(),
        rvn: renewed.rvn.clone(),
    };
    let b = done(st, &lock, write(st, &lock, current, Some(&now), &c).await, "takeover").await;
    assert_eq!(
        (b.owner.as_deref(), b.token.as_deref(), b.fence),
        (Some("bob"), Some(tb.as_str()), a.fence + 1)
    );
    assert_eq!(b.history.last().map(|e| e.event), Some(EventKind::TakenOver));
    // The old token holds at no version.
    let now = read(st, &lock).await;
    let c = change(st, renewing());
    let old = Expect::TokenRvn {
        token: ta,
        rvn: b.rvn.clone(),
    };
    let w = write(st, &lock, old, None, &c).await;
    refused(st, &lock, w, &now.state, "TokenRvn with a token taken over").await;
    // Rvn holds on exactly the version written last, held or free (re-timing a tombstone).
    let c = change(st, Action::Release);
    let free = done(st, &lock, write(st, &lock, Expect::Rvn(b.rvn.clone()), None, &c).await, "release by Rvn").await;
    let tomb = read(st, &lock).await;
    let c = change(st, Action::Release);
    let retimed = done(
        st,
        &lock,
        write(st, &lock, Expect::Rvn(free.rvn.clone()), Some(&tomb), &c).await,
        "re-timing a tombstone",
    )
    .await;
    assert!(retimed.is_free() && retimed.fence == b.fence && retimed.rvn == c.rvn, "{retimed:?}");
    let now = read(st, &lock).await;
    let c = change(st, Action::Release);
    let w = write(st, &lock, Expect::Rvn(free.rvn), None, &c).await;
    refused(st, &lock, w, &now.state, "Rvn of a tombstone re-timed since").await;
}

async fn exact_replaces_exactly_the_record_read(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("exact");
    // Over a read of absent: a tombstone, its fence not below the store ms.
    let absent = read(st, &lock).await;
    let c = logged(change(st, Action::Release), EventKind::Forced);
    let t = done(st, &lock, write(st, &lock, Expect::Exact, Some(&absent), &c).await, "Exact over absent").await;
    assert!(t.is_free() && t.fence >= c.now as u64, "{t:?}");

    // Over a valid record: the change applied to it like any write (fence, queue, history kept).
    let ta = token();
    let c = change(st, granting("alice", &ta));
    done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    let now = st.clock().now_ms();
    let entry = waiter("wendy", now, now);
    queue_write(st, &lock, None, Some(("q1", &entry)), None, None).await;
    let stale = read(st, &lock).await;
    let c = change(st, renewing());
    done(st, &lock, write(st, &lock, Expect::Token(ta), None, &c).await, "renew").await;
    let base = read(st, &lock).await;
    let c = logged(change(st, Action::Release), EventKind::Forced);
    let w = write(st, &lock, Expect::Exact, Some(&stale), &c).await;
    refused(st, &lock, w, &base.state, "Exact over a record changed since its read").await;
    let before = base.record().unwrap().clone();
    let r = done(
        st,
        &lock,
        write(st, &lock, Expect::Exact, Some(&base), &c).await,
        "Exact over a held record",
    )
    .await;
    assert!(r.is_free() && r.fence == before.fence && r.rvn == c.rvn, "{r:?}");
    assert_eq!(r.waiters, before.waiters, "Exact keeps the queue of the record it replaces");
    assert_eq!(r.history.len(), before.history.len() + 1, "and its history: {r:?}");

    // Without a base there is nothing it could be exact about: an error, nothing written.
    let c = logged(change(st, Action::Release), EventKind::Forced);
    let blind = st
        .write(Write {
            lock: &lock,
            expect: Expect::Exact,
            base: None,
            change: &c,
        })
        .await;
    assert!(blind.is_err(), "{}: Exact without a base: {blind:?}", st.url());
    assert_eq!(valid(st, &lock).await, r);
}

async fn a_corrupt_record_is_nobodys_and_only_exact_replaces_it(s: Subject) {
    let st = &*s.store;
    for (name, junk) in [("garbage", Junk::Garbage), ("no-rvn", Junk::NoRvn(BIG_FENCE))] {
        let lock = s.lock(name);
        s.plant(&lock, junk).await;
        let seen = read(st, &lock).await;
        assert!(
            matches!(&seen.state, State::Corrupt(why) if !why.is_empty()),
            "{}: {junk:?} reads {seen:?}",
            st.url()
        );
        // No condition but Exact holds on it, on a read or without: not Vacant, nobody's.
        let conditions = [
            Expect::Vacant,
            Expect::Owner("someone".into()),
            Expect::Token("t".into()),
            Expect::TokenRvn {
                token: "t".into(),
                rvn: "r".into(),
            },
            Expect::Rvn("r".into()),
        ];
        for expect in conditions {
            for base in [None, Some(&seen)] {
                let c = change(st, granting("alice", &token()));
                let w = write(st, &lock, expect.clone(), base, &c).await;
                refused(st, &lock, w, &seen.state, &format!("{expect:?} over {junk:?}")).await;
            }
        }
        // Queue bookkeeping leaves it alone.
        let now = st.clock().now_ms();
        let entry = waiter("wendy", now, now);
        for base in [None, Some(&seen)] {
            queue_write(st, &lock, base, Some(("q1", &entry)), None, None).await;
            assert_same(&read(st, &lock).await.state, &seen.state, "a waiter update over a corrupt record");
        }
        // Break glass: Exact over the first read (so nothing above changed the record) replaces
        // it by a tombstone whose fence does not go back (the old one where it can be read,
        // else the store ms).
        let c = logged(change(st, Action::Release), EventKind::Forced);
        let t = done(
            st,
            &lock,
            write(st, &lock, Expect::Exact, Some(&seen), &c).await,
            "Exact over a corrupt record",
        )
        .await;
        assert!(t.is_free(), "{t:?}");
        match junk {
            Junk::NoRvn(fence) => assert_eq!(t.fence, fence, "the readable fence is kept"),
            Junk::Garbage => assert!(t.fence >= c.now as u64, "an unreadable fence restarts at the store ms: {t:?}"),
        }
        // And it is a lock again: the next grant counts on from there.
        let c = change(st, granting("alice", &token()));
        let g = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "a grant after break-glass").await;
        assert_eq!(g.fence, t.fence + 1);
    }

    // Exact over a corrupt record that changed since its read: refused.
    let lock = s.lock("changed");
    s.plant(&lock, Junk::NoRvn(BIG_FENCE)).await;
    let stale = read(st, &lock).await;
    s.plant(&lock, Junk::NoRvn(BIG_FENCE + 5)).await;
    let now = read(st, &lock).await;
    let c = logged(change(st, Action::Release), EventKind::Forced);
    let w = write(st, &lock, Expect::Exact, Some(&stale), &c).await;
    refused(st, &lock, w, &now.state, "Exact over a corrupt record replaced since its read").await;
    let t = done(
        st,
        &lock,
        write(st, &lock, Expect::Exact, Some(&now), &c).await,
        "Exact over the current one",
    )
    .await;
    assert_eq!(t.fence, BIG_FENCE + 5);
}

async fn fences_only_go_up_across_grant_release_regrant_and_takeover(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("fence");
    let ta = token();
    let c = change(st, granting("alice", &ta));
    let f0 = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await.fence;
    assert_eq!(f0, c.fence_floor + 1, "a created record starts at its floor");
    let c = change(st, renewing());
    let r = done(st, &lock, write(st, &lock, Expect::Token(ta.clone()), None, &c).await, "renew").await;
    assert_eq!(r.fence, f0, "renew keeps the fence");
    let c = change(st, Action::Release);
    let r = done(st, &lock, write(st, &lock, Expect::Token(ta), None, &c).await, "release").await;
    assert_eq!(r.fence, f0, "release keeps the fence");
    let tb = token();
    let c = change(st, granting("bob", &tb));
    let b = done(
        st,
        &lock,
        write(st, &lock, Expect::Vacant, Some(&read(st, &lock).await), &c).await,
        "re-grant",
    )
    .await;
    assert_eq!(b.fence, f0 + 1);
    let tc = token();
    let c = logged(change(st, granting("carol", &tc)), EventKind::TakenOver);
    let taken = Expect::TokenRvn { token: tb, rvn: b.rvn };
    let r = done(st, &lock, write(st, &lock, taken, None, &c).await, "takeover").await;
    assert_eq!(r.fence, f0 + 2);
    let c = change(st, Action::Release);
    done(st, &lock, write(st, &lock, Expect::Token(tc), None, &c).await, "release").await;
    let c = change(st, granting("alice", &token()));
    let r = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "blind re-grant").await;
    assert_eq!(r.fence, f0 + 3);
    // Every event carries the fence after it, as the store reads it back.
    let history: Vec<_> = valid(st, &lock).await.history.iter().map(|e| (e.event, e.fence)).collect();
    use EventKind::*;
    let expected = [
        (Acquired, f0),
        (Released, f0),
        (Acquired, f0 + 1),
        (TakenOver, f0 + 2),
        (Released, f0 + 2),
        (Acquired, f0 + 3),
    ];
    assert_eq!(history, expected.map(|(e, f)| (e, Some(f))).to_vec(), "{}", st.url());
}

fn shared_grant(owner: &str, token: &str, slot: u32) -> Action {
    let Action::Grant(grantee) = granting(owner, token) else {
        unreachable!()
    };
    Action::Shared(SharedOp::Grant { slot, grantee })
}

/// Shared holds: created from absent with the lock's N, each further one on the version read
/// (a stale version is refused, so two grants never share a slot), an exclusive grant refused
/// beside them, a grant that assumes another N refused, and one hold's release leaving the
/// others exactly as they were.
async fn shared_holds_are_written_on_the_version_read_and_never_beside_an_exclusive_one(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("shared");
    let absent = read(st, &lock).await;
    let mut c = change(st, shared_grant("a", &token(), 1));
    c.slots = 3;
    let first = done(st, &lock, write(st, &lock, Expect::Vacant, Some(&absent), &c).await, "shared from absent").await;
    assert_eq!((first.slots, first.fence), (Some(3), c.fence_floor + 1));
    assert_eq!(first.hold(1).map(|h| (h.owner.as_str(), h.fence)), Some(("a", first.fence)));
    let base = read(st, &lock).await;
    let mut c = change(st, shared_grant("b", &token(), 2));
    c.slots = 3;
    let second = done(
        st,
        &lock,
        write(st, &lock, Expect::Rvn(first.rvn.clone()), Some(&base), &c).await,
        "slot 2",
    )
    .await;
    assert_eq!(second.fence, first.fence + 1);
    // A racer that read the same version and wants slot 2 too is refused.
    let mut racer = change(st, shared_grant("c", &token(), 2));
    racer.slots = 3;
    let now = State::Valid(second.clone());
    refused(
        st,
        &lock,
        write(st, &lock, Expect::Rvn(first.rvn.clone()), Some(&base), &racer).await,
        &now,
        "stale version",
    )
    .await;
    // No exclusive grant beside shared holds, blind or not, of any N.
    for (n, base) in [(3, Some(read(st, &lock).await)), (1, None)] {
        let mut x = change(st, granting("x", &token()));
        x.slots = n;
        refused(
            st,
            &lock,
            write(st, &lock, Expect::Vacant, base.as_ref(), &x).await,
            &now,
            "exclusive beside shared",
        )
        .await;
    }
    // A shared grant that assumes another N is refused even on the right version.
    let mut wrong_n = change(st, shared_grant("d", &token(), 3));
    wrong_n.slots = 2;
    refused(
        st,
        &lock,
        write(st, &lock, Expect::Rvn(second.rvn.clone()), Some(&read(st, &lock).await), &wrong_n).await,
        &now,
        "another N",
    )
    .await;
    // a gives slot 1 back; b's hold is untouched.
    let mut release = change(st, Action::Shared(SharedOp::Release { slot: 1 }));
    release.slots = 3;
    let after = done(
        st,
        &lock,
        write(st, &lock, Expect::Rvn(second.rvn.clone()), Some(&read(st, &lock).await), &release).await,
        "release slot 1",
    )
    .await;
    assert!(after.hold(1).is_none());
    assert_eq!(after.hold(2), second.hold(2), "{}: the other hold is untouched", st.url());
    assert_eq!(after.fence, second.fence, "a release keeps the fence");
    assert!(after.expires_at >= second.expires_at, "GC never comes before a hold's lease end");
}

async fn waiter_updates_never_touch_the_holder(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("queue");
    let ta = token();
    let c = change(st, granting("alice", &ta));
    let a = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    let untouched = |r: &Record, what: &str| assert_eq!(holder_side(r), holder_side(&a), "{}: {what}", st.url());
    let now = st.clock().now_ms();
    // Set, on a read and without; an entry long dead (its own window is 1 s).
    let w1 = waiter("w1", now, now);
    let w2 = waiter("w2", now + 1, now + 1);
    let dead = Waiter {
        window: Some(1_000),
        ..waiter("gone", now - 600_000, now - 600_000)
    };
    queue_write(st, &lock, Some(&read(st, &lock).await), Some(("q1", &w1)), None, None).await;
    queue_write(st, &lock, None, Some(("q2", &w2)), None, None).await;
    queue_write(st, &lock, None, Some(("dead", &dead)), None, None).await;
    let r = valid(st, &lock).await;
    untouched(&r, "set");
    assert_eq!(r.waiters, entries(&[("q1", &w1), ("q2", &w2), ("dead", &dead)]));
    // Refresh: SeenAt moves, nothing else.
    let w1b = Waiter { seen_at: now + 5, ..w1 };
    queue_write(st, &lock, Some(&read(st, &lock).await), Some(("q1", &w1b)), None, None).await;
    let r = valid(st, &lock).await;
    untouched(&r, "refresh");
    assert_eq!(r.waiters, entries(&[("q1", &w1b), ("q2", &w2), ("dead", &dead)]));
    // Prune with a refresh: the dead entry goes, the live ones stay.
    let w2b = Waiter { seen_at: now + 6, ..w2 };
    let prune = Prune {
        now: st.clock().now_ms(),
        window: Duration::from_secs(30),
    };
    queue_write(st, &lock, None, Some(("q2", &w2b)), None, Some(prune)).await;
    let r = valid(st, &lock).await;
    untouched(&r, "prune");
    assert_eq!(r.waiters, entries(&[("q1", &w1b), ("q2", &w2b)]));
    // Remove.
    queue_write(st, &lock, Some(&read(st, &lock).await), None, Some("q1"), None).await;
    let r = valid(st, &lock).await;
    untouched(&r, "remove");
    assert_eq!(r.waiters, entries(&[("q2", &w2b)]));

    // The holder's writes after all that: TokenRvn at the Rvn of its grant, then Token.
    let c = change(st, renewing());
    let at_grant = Expect::TokenRvn {
        token: ta.clone(),
        rvn: a.rvn.clone(),
    };
    let r = done(st, &lock, write(st, &lock, at_grant, None, &c).await, "TokenRvn after waiter updates").await;
    assert_eq!(r.waiters, entries(&[("q2", &w2b)]), "holder writes keep the queue");
    let c = change(st, renewing());
    done(
        st,
        &lock,
        write(st, &lock, Expect::Token(ta.clone()), None, &c).await,
        "Token after waiter updates",
    )
    .await;

    // On a base read before a waiter update: written, or refused with a record that still
    // meets the condition, over which it is written (what `Locker::commit` does).
    for takeover in [false, true] {
        let stale = read(st, &lock).await;
        let r = stale.record().unwrap().clone();
        let t = st.clock().now_ms();
        queue_write(st, &lock, None, Some((&token(), &waiter("late", t, t))), None, None).await;
        let (expect, c) = match takeover {
            false => (Expect::Token(ta.clone()), change(st, renewing())),
            true => (
                Expect::TokenRvn {
                    token: ta.clone(),
                    rvn: r.rvn.clone(),
                },
                logged(change(st, granting("bob", &token())), EventKind::TakenOver),
            ),
        };
        let what = format!("{expect:?} over a read from before a waiter update");
        let again = match write(st, &lock, expect.clone(), Some(&stale), &c).await {
            Written::Done(r) => Written::Done(r),
            Written::Conflict(o) => {
                assert!(expect.holds(&o.state), "{}: {what}: refused over {:?}", st.url(), o.state);
                write(st, &lock, expect, Some(&o), &c).await
            }
        };
        let r = done(st, &lock, again, &what).await;
        assert_eq!(r.rvn, c.rvn);
        assert_eq!(r.waiters.len(), 2 + usize::from(takeover), "{r:?}");
    }
}

async fn waiter_updates_write_nothing_where_there_is_nothing_to_change(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("absent");
    let absent = read(st, &lock).await;
    let now = st.clock().now_ms();
    let entry = waiter("w", now, now);
    let prune = Prune {
        now,
        window: Duration::from_secs(30),
    };
    for base in [None, Some(&absent)] {
        queue_write(st, &lock, base, Some(("q1", &entry)), None, Some(prune)).await;
        assert!(
            matches!(read(st, &lock).await.state, State::Absent),
            "{}: a waiter update created a record",
            st.url()
        );
        queue_write(st, &lock, base, None, Some("q1"), None).await;
        assert!(matches!(read(st, &lock).await.state, State::Absent), "{}", st.url());
    }
    // Removing an entry that is not there changes nothing, Rvn included.
    let c = change(st, granting("alice", &token()));
    let a = done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    queue_write(st, &lock, None, None, Some("nobody"), Some(prune)).await;
    assert_eq!(valid(st, &lock).await, a);
}

async fn the_queue_keeps_its_order(s: Subject) {
    let st = &*s.store;
    let lock = s.lock("order");
    let ta = token();
    let c = change(st, granting("alice", &ta));
    done(st, &lock, write(st, &lock, Expect::Vacant, None, &c).await, "grant").await;
    let t = st.clock().now_ms();
    let order = |r: &Record| queue::ordered(r, QueueMode::Fifo).into_iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    // Queue tokens sort against arrival, so only EnqueuedAt can give the order.
    let mut expected = BTreeMap::new();
    for (i, (tok, owner)) in [("q-z", "first"), ("q-m", "second"), ("q-a", "third")].into_iter().enumerate() {
        let entry = waiter(owner, t + i as i64, t + i as i64);
        queue_write(st, &lock, None, Some((tok, &entry)), None, None).await;
        expected.insert(tok.to_string(), entry);
    }
    let r = valid(st, &lock).await;
    assert_eq!(r.waiters, expected, "every entry as written");
    assert_eq!(order(&r), ["q-z", "q-m", "q-a"]);
    // Refreshes move nobody: the first registration counts.
    for tok in ["q-a", "q-z"] {
        let entry = Waiter {
            seen_at: t + 100,
            ..expected[tok].clone()
        };
        queue_write(st, &lock, Some(&read(st, &lock).await), Some((tok, &entry)), None, None).await;
        expected.insert(tok.to_string(), entry);
    }
    let r = valid(st, &lock).await;
    assert_eq!((&r.waiters, order(&r)), (&expected, vec!["q-z".into(), "q-m".into(), "q-a".into()]));
    // The head leaves, a newcomer queues last; holder writes leave the queue alone.
    queue_write(st, &lock, None, None, Some("q-z"), None).await;
    expected.remove("q-z");
    let newcomer = waiter("fourth", t + 50, t + 50);
    queue_write(st, &lock, None, Some(("q-0", &newcomer)), None, None).await;
    expected.insert("q-0".into(), newcomer);
    let c = change(st, renewing());
    done(st, &lock, write(st, &lock, Expect::Token(ta.clone()), None, &c).await, "renew").await;
    let c = change(st, Action::Release);
    let r = done(st, &lock, write(st, &lock, Expect::Token(ta), None, &c).await, "release").await;
    assert_eq!((&r.waiters, order(&r)), (&expected, vec!["q-m".into(), "q-a".into(), "q-0".into()]));
}

async fn list_returns_every_record_with_its_name(s: Subject) {
    let st = &*s.store;
    // Names with characters a file name or object key cannot hold as they are.
    let held = [s.lock("plain"), s.lock("with space & ünïcode"), format!(".{}", s.lock("dot-first"))];
    let free = [s.lock("group/project/deploy"), s.lock("per%cent+plus:colon"), format!("{}/..", s.test)];
    let corrupt = [s.lock("corrupt/garbage"), s.lock("corrupt no-rvn")];
    for (i, lock) in held.iter().chain(&free).enumerate() {
        let tok = token();
        let c = change(st, granting(&format!("owner-{i}"), &tok));
        done(st, lock, write(st, lock, Expect::Vacant, None, &c).await, "grant").await;
        if free.contains(lock) {
            let c = change(st, Action::Release);
            done(st, lock, write(st, lock, Expect::Token(tok), None, &c).await, "release").await;
        }
    }
    s.plant(&corrupt[0], Junk::Garbage).await;
    s.plant(&corrupt[1], Junk::NoRvn(BIG_FENCE)).await;

    let listed: BTreeMap<String, Observed> = (st.list().await)
        .unwrap_or_else(|e| panic!("{}: list: {e}", st.url()))
        .into_iter()
        .filter(|(name, _)| name.contains(&s.test))
        .collect();
    let names: BTreeSet<&String> = held.iter().chain(&free).chain(&corrupt).collect();
    assert_eq!(listed.keys().collect::<BTreeSet<_>>(), names, "{}: list names every record", st.url());
    for (i, lock) in held.iter().chain(&free).enumerate() {
        let r = listed[lock]
            .record()
            .unwrap_or_else(|| panic!("{}: {lock:?} lists as {:?}", st.url(), listed[lock]));
        assert_eq!(r, &valid(st, lock).await, "{}: {lock:?} lists as it reads", st.url());
        match free.contains(lock) {
            true => assert!(r.is_free(), "{r:?}"),
            false => assert_eq!(r.owner, Some(format!("owner-{i}"))),
        }
    }
    for lock in &corrupt {
        assert!(
            matches!(listed[lock].state, State::Corrupt(_)),
            "{}: {lock:?} lists as {:?}",
            st.url(),
            listed[lock]
        );
    }
}

on_every_library_store!(
    vacant_grants_from_absent_and_from_a_free_tombstone_never_over_a_holder,
    the_blind_grant_is_refused_while_someone_is_queued,
    owner_and_token_hold_for_the_holder_only,
    token_rvn_and_rvn_hold_at_the_version_read_only,
    exact_replaces_exactly_the_record_read,
    a_corrupt_record_is_nobodys_and_only_exact_replaces_it,
    fences_only_go_up_across_grant_release_regrant_and_takeover,
    waiter_updates_never_touch_the_holder,
    waiter_updates_write_nothing_where_there_is_nothing_to_change,
    the_queue_keeps_its_order,
    list_returns_every_record_with_its_name,
    shared_holds_are_written_on_the_version_read_and_never_beside_an_exclusive_one,
);
