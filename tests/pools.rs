//! Pools and shared locks (docs/design.md, "Pools, shared locks and several locks at once") on
//! every store, with the real binary: slots lowest free first, N fixed at creation, an
//! exclusive hold alone and not starved, one stale shared holder taken over without
//! disturbing the others, fences unique and increasing across all holders.

mod support;

use std::time::Duration;

use support::{Backend, Env, assert_code, stderr, wait_until};

fn shared(e: &Env, owner: &str, lock: &str, n: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["acquire", "--slots", n, "--shared", "--no-wait"];
    args.extend(extra);
    e.json(owner, lock, &args)
}

fn fence(v: &serde_json::Value) -> u64 {
    v["fence"].as_u64().unwrap_or_else(|| panic!("no fence in {v}"))
}

fn slots_held(e: &Env, lock: &str) -> Vec<(String, String)> {
    let r = e.record(lock);
    let mut held: Vec<(String, String)> = r["Shared"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, h)| (k.clone(), h["Owner"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    held.sort();
    held
}

fn pool_grants_the_lowest_free_slot_and_fences_only_go_up(b: Backend) {
    let Some(e) = Env::try_new(b, "pool-slots") else { return };
    let lock = e.lock("staging");
    let mut fences = Vec::new();
    for (i, owner) in ["a", "b", "c"].into_iter().enumerate() {
        let (code, g) = shared(&e, owner, &lock, "3", &[]);
        assert_eq!(code, 0, "{g}");
        assert_eq!(g["slot"], i as u64 + 1, "{g}");
        assert_eq!((g["slots"].as_u64(), g["shared"].as_bool()), (Some(3), Some(true)), "{g}");
        fences.push(fence(&g));
    }
    // Full: a fourth is refused, and nothing changed.
    let before = e.record(&lock);
    let out = e.run("d", &lock, &["acquire", "--slots", "3", "--shared", "--no-wait"]);
    assert_code(&out, 73);
    assert!(stderr(&out).contains("3 shared holder(s) of 3"), "{}", stderr(&out));
    assert_eq!(e.record(&lock), before);
    // b gives its slot back (found by owner, no flag needed); d gets slot 2, with a new fence.
    assert_code(&e.run("b", &lock, &["release"]), 0);
    let out = e.run("d", &lock, &["acquire", "--slots", "3", "--shared", "--no-wait", "--output", "env"]);
    assert_code(&out, 0);
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("PIPELINE_LOCK_SLOT=2\n"), "{env}");
    let d_fence: u64 = env
        .lines()
        .find_map(|l| l.strip_prefix("PIPELINE_LOCK_FENCE="))
        .and_then(|f| f.parse().ok())
        .expect("a fence line");
    fences.push(d_fence);
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "fences {fences:?}");
    assert_eq!(
        slots_held(&e, &lock),
        [("1", "a"), ("2", "d"), ("3", "c")].map(|(k, o)| (k.to_string(), o.to_string()))
    );
    let r = e.record(&lock);
    assert_eq!(r["Slots"], 3);
    assert_eq!(r["Fence"].as_u64(), Some(d_fence));
}

fn another_n_is_refused_naming_both_and_nothing_is_written(b: Backend) {
    let Some(e) = Env::try_new(b, "pool-n") else { return };
    let lock = e.lock("l");
    assert_eq!(shared(&e, "a", &lock, "3", &[]).0, 0);
    let before = e.record(&lock);
    for args in [
        vec!["acquire", "--slots", "2", "--shared", "--no-wait"],
        vec!["acquire", "--no-wait"],
        vec!["status", "--slots", "4"],
    ] {
        let out = e.run("b", &lock, &args);
        assert_code(&out, 78);
        let err = stderr(&out);
        assert!(err.contains("3 slot(s)") && err.contains(&lock), "{args:?}: {err}");
    }
    assert_eq!(e.record(&lock), before);
    for bad in ["0", "65"] {
        let out = e.run("b", &lock, &["acquire", "--slots", bad, "--shared"]);
        assert_code(&out, 2);
        assert!(stderr(&out).contains("1 to 64"), "{}", stderr(&out));
    }
    assert_eq!(e.record(&lock), before);
}

fn an_exclusive_hold_is_alone_and_holds_back_later_shared_ones(b: Backend) {
    let Some(e) = Env::try_new(b, "pool-rw") else { return };
    let lock = e.lock("db");
    assert_eq!(shared(&e, "reader1", &lock, "5", &[]).0, 0);
    // The migration waits for the reader to leave...
    let writer = e.spawn(
        "migration",
        &lock,
        &["acquire", "--slots", "5", "--wait", "60s", "--retry-interval", "1s", "--output", "json"],
    );
    wait_until("the migration to queue", Duration::from_secs(20), || {
        e.record(&lock)["Waiters"]
            .as_object()
            .is_some_and(|w| w.values().any(|w| w["Owner"] == "migration"))
    });
    // ...and a reader that comes after it waits behind it, though slots are free.
    let out = e.run("reader2", &lock, &["acquire", "--slots", "5", "--shared", "--no-wait"]);
    assert_code(&out, 73);
    assert_code(&e.run("reader1", &lock, &["release"]), 0);
    let out = writer.wait_with_output().unwrap();
    assert_code(&out, 0);
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((g["shared"].as_bool(), g["slot"].as_u64()), (Some(false), Some(1)), "{g}");
    // While it holds, no reader gets in.
    assert_code(&e.run("reader3", &lock, &["acquire", "--slots", "5", "--shared", "--no-wait"]), 73);
    let r = e.record(&lock);
    assert_eq!(r["Owner"], "migration");
    assert!(r.get("Shared").is_none_or(|s| s.as_object().is_some_and(|m| m.is_empty())), "{r}");
    assert_code(&e.run("migration", &lock, &["release"]), 0);
    assert_eq!(shared(&e, "reader3", &lock, "5", &[]).0, 0);
}

fn one_stale_shared_holder_is_taken_over_and_the_others_are_untouched(b: Backend) {
    let Some(e) = Env::try_new(b, "pool-stale") else { return };
    let lock = e.lock("l");
    let (_, dead) = shared(&e, "dead", &lock, "2", &["--ttl", "1s"]);
    let (_, alive) = shared(&e, "alive", &lock, "2", &["--ttl", "10m"]);
    let before = e.record(&lock);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, taker) = e.json(
        "taker",
        &lock,
        &["acquire", "--slots", "2", "--shared", "--wait", "30s", "--clock-margin", "0s"],
    );
    assert_eq!(code, 0, "{taker}");
    assert_eq!(taker["slot"], dead["slot"], "{taker}");
    assert_eq!(taker["how"]["kind"], "took-over", "{taker}");
    assert!(fence(&taker) > fence(&alive), "{taker} after {alive}");
    let after = e.record(&lock);
    let slot = alive["slot"].to_string();
    // The live holder's hold is exactly as it was: same token, fence, version and lease.
    assert_eq!(after["Shared"][&slot], before["Shared"][&slot]);
    assert_eq!(after["Shared"][dead["slot"].to_string()]["Owner"], "taker");
    // The taken-over holder learns it lost the lock (exit 76); the live one renews fine.
    assert_code(&e.run("dead", &lock, &["release"]), 76);
    let (code, renewed) = e.json("alive", &lock, &["renew", "--token", alive["token"].as_str().unwrap()]);
    assert_eq!(code, 0, "{renewed}");
    assert_eq!(
        (renewed["fence"].clone(), renewed["slot"].clone()),
        (alive["fence"].clone(), alive["slot"].clone())
    );
}

fn an_exclusive_takeover_of_stale_shared_holds_tells_every_holder(b: Backend) {
    let Some(e) = Env::try_new(b, "pool-evict") else { return };
    let lock = e.lock("l");
    assert_eq!(shared(&e, "a", &lock, "2", &["--ttl", "1s"]).0, 0);
    assert_eq!(shared(&e, "b", &lock, "2", &["--ttl", "1s"]).0, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, x) = e.json("x", &lock, &["acquire", "--slots", "2", "--wait", "30s", "--clock-margin", "0s"]);
    assert_eq!(code, 0, "{x}");
    assert_eq!(x["how"]["kind"], "took-over", "{x}");
    let r = e.record(&lock);
    assert_eq!(r["Owner"], "x");
    assert!(r.get("Shared").is_none_or(|s| s.as_object().is_some_and(|m| m.is_empty())), "{r}");
    // Both evicted holders learn that they lost the lock, not that someone else holds it.
    for owner in ["a", "b"] {
        let out = e.run(owner, &lock, &["release"]);
        assert_code(&out, 76);
        assert!(stderr(&out).contains("not held by"), "{owner}: {}", stderr(&out));
    }
}

fn a_single_holder_record_reads_as_one_slot(b: Backend) {
    let Some(e) = Env::try_new(b, "pool-old") else { return };
    let lock = e.lock("l");
    // A record as the single-holder version writes it: no Slots, no Shared.
    let (_, g) = e.json("old", &lock, &["acquire"]);
    let r = e.record(&lock);
    assert!(r.get("Slots").is_none() && r.get("Shared").is_none(), "{r}");
    assert_eq!(g["slot"], 1);
    assert_code(&e.run("new", &lock, &["acquire", "--slots", "3", "--shared", "--no-wait"]), 78);
    assert_code(&e.run("new", &lock, &["acquire", "--slots", "1", "--shared", "--no-wait"]), 73);
    assert_code(&e.run("old", &lock, &["release"]), 0);
    let (code, s) = shared(&e, "new", &lock, "1", &[]);
    assert_eq!(code, 0, "{s}");
    assert!(fence(&s) > fence(&g));
}

on_every_store!(
    pool_grants_the_lowest_free_slot_and_fences_only_go_up,
    another_n_is_refused_naming_both_and_nothing_is_written,
    an_exclusive_hold_is_alone_and_holds_back_later_shared_ones,
    one_stale_shared_holder_is_taken_over_and_the_others_are_untouched,
    a_single_holder_record_reads_as_one_slot,
    an_exclusive_takeover_of_stale_shared_holds_tells_every_holder,
);
