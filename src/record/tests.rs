use super::*;

fn change(action: Action, kind: EventKind) -> Change {
    Change {
        action,
        rvn: "r2".into(),
        now: 1_000,
        lease_expires_at: Some(61_000),
        expires_at: Some(99),
        fence_floor: 0,
        event: Some(Event {
            event: kind,
            owner: "me".into(),
            fence: None,
            at: 1_000,
            by: None,
            why: None,
            from: None,
            waited: None,
        }),
        slots: 1,
        evict: false,
        evicted: Vec::new(),
    }
}

fn grant() -> Change {
    change(
        Action::Grant(Grantee {
            owner: "me".into(),
            token: "t".into(),
            holder: Holder::default(),
            dequeue: vec![],
        }),
        EventKind::Acquired,
    )
}

#[test]
fn grant_increments_fence_and_release_keeps_it() {
    let held = Record::vacant("l").apply(&grant());
    assert_eq!(held.fence, 1);
    assert_eq!(held.history[0].fence, Some(1));
    assert!(held.validate("l").is_ok());
    let renewed = held.apply(&change(
        Action::Renew {
            restamp: false,
            raise_fence: None,
        },
        EventKind::Renewed,
    ));
    assert_eq!((renewed.fence, renewed.token.as_deref()), (1, Some("t")));
    let free = renewed.apply(&change(Action::Release, EventKind::Released));
    assert_eq!(free.fence, 1);
    assert!(free.is_free());
    assert_eq!(free.token, None);
    assert!(free.validate("l").is_ok());
}

#[test]
fn history_is_capped() {
    let mut r = Record::vacant("l");
    for _ in 0..(HISTORY_LEN + 5) {
        r = r.apply(&grant());
    }
    assert_eq!(r.history.len(), HISTORY_LEN);
    assert_eq!(r.history.last().unwrap().fence, Some(r.fence));
    assert_eq!(r.history[0].fence, Some(r.fence - HISTORY_LEN as u64 + 1));
}

#[test]
fn history_fences_follow_from_grant_events() {
    let mut r = Record::vacant("l");
    for c in [
        grant(),
        change(Action::Release, EventKind::Released),
        grant(),
        change(
            Action::Renew {
                restamp: false,
                raise_fence: None,
            },
            EventKind::Renewed,
        ),
    ] {
        r = r.apply(&c);
    }
    let written: Vec<_> = r.history.iter().map(|e| e.fence).collect();
    for e in &mut r.history {
        e.fence = None;
    }
    r.fill_history_fences();
    assert_eq!(r.history.iter().map(|e| e.fence).collect::<Vec<_>>(), written);
    assert_eq!(written, vec![Some(1), Some(1), Some(2), Some(2)]);
}

#[test]
fn held_record_without_token_is_invalid() {
    let mut r = Record::vacant("l").apply(&grant());
    r.token = None;
    assert!(r.validate("l").unwrap_err().contains("Token"));
    assert!(r.validate("other").is_err());
}

fn waiter(seen: i64) -> Waiter {
    Waiter {
        owner: "w".into(),
        enqueued_at: 1,
        seen_at: seen,
        ordinal: Some(3),
        url: None,
        window: None,
        shared: false,
    }
}

#[test]
fn waiter_bookkeeping_never_touches_the_holder() {
    let held = Record::vacant("l").apply(&grant());
    let queued = held
        .with_waiters(Some(("a", &waiter(10))), None, None)
        .with_waiters(Some(("b", &waiter(1))), None, None);
    assert_eq!(
        (queued.rvn.as_str(), queued.token.as_deref(), queued.fence),
        (held.rvn.as_str(), held.token.as_deref(), held.fence)
    );
    // Pruning spares the entry being set, and drops those unseen since the cut.
    let pruned = queued.with_waiters(
        Some(("c", &waiter(0))),
        None,
        Some(crate::queue::Prune {
            now: 5,
            window: std::time::Duration::ZERO,
        }),
    );
    assert_eq!(pruned.waiters.keys().collect::<Vec<_>>(), vec!["a", "c"]);
    assert!(pruned.with_waiters(None, Some("a"), None).waiters.contains_key("c"));
    // Holder writes keep the queue; a grant removes what it dequeues.
    let renewed = queued.apply(&change(
        Action::Renew {
            restamp: false,
            raise_fence: None,
        },
        EventKind::Renewed,
    ));
    assert_eq!(renewed.waiters, queued.waiters);
    let released = renewed.apply(&change(Action::Release, EventKind::Released));
    let g = Grantee {
        owner: "w".into(),
        token: "t2".into(),
        holder: Holder::default(),
        dequeue: vec!["a".into()],
    };
    let next = released.apply(&change(Action::Grant(g), EventKind::Acquired));
    assert_eq!(next.waiters.keys().collect::<Vec<_>>(), vec!["b"]);
    let v = serde_json::to_value(&queued).unwrap();
    assert_eq!(v["Waiters"]["a"]["SeenAt"], 10);
    assert_eq!(v["Waiters"]["a"]["Ordinal"], 3);
}

#[test]
fn json_uses_design_names() {
    let r = Record::vacant("l").apply(&grant());
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "LockID",
        "Owner",
        "Token",
        "Fence",
        "Rvn",
        "AcquiredAt",
        "LeaseExpiresAt",
        "ExpiresAt",
        "History",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert_eq!(v["History"][0]["Event"], "acquired");
}
