//! The conformance suite: every store, the real binary, the protocol's rules.

mod support;

use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr};

fn fence(v: &serde_json::Value) -> u64 {
    v["fence"].as_u64().unwrap_or_else(|| panic!("no fence in {v}"))
}

fn grant(b: Backend) {
    let Some(e) = Env::try_new(b, "grant") else { return };
    let lock = e.lock("l");
    let (code, g) = e.json("alice", &lock, &["acquire", "--reason", "deploy 42"]);
    assert_eq!(code, 0, "{g}");
    assert_eq!(g["owner"], "alice");
    assert_eq!(g["how"]["kind"], "acquired");
    assert!(fence(&g) >= 1);
    assert_eq!(g["token"].as_str().unwrap().len(), 32);
    let r = e.record(&lock);
    assert_eq!(r["Owner"], "alice");
    assert_eq!(r["Token"], g["token"]);
    assert_eq!(r["Holder"]["Reason"], "deploy 42");
    assert!(r["LeaseExpiresAt"].as_i64().unwrap() > r["AcquiredAt"].as_i64().unwrap());
    assert!(r["ExpiresAt"].as_i64().unwrap() > r["LeaseExpiresAt"].as_i64().unwrap() / 1000);
    assert_eq!(r["History"][0]["Event"], "acquired");
    assert_eq!(r["History"][0]["Fence"], g["fence"]);
}

fn reentrance_keeps_the_fence(b: Backend) {
    let Some(e) = Env::try_new(b, "reenter") else { return };
    let lock = e.lock("l");
    let (_, first) = e.json("alice", &lock, &["acquire"]);
    let (code, again) = e.json("alice", &lock, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["how"]["kind"], "reentered");
    assert_eq!(fence(&again), fence(&first));
    assert_eq!(again["token"], first["token"]);
}

fn release_by_another_owner_changes_nothing(b: Backend) {
    let Some(e) = Env::try_new(b, "other-release") else { return };
    let lock = e.lock("l");
    let (_, g) = e.json("alice", &lock, &["acquire"]);
    let before = e.record(&lock);
    let out = e.run("bob", &lock, &["release"]);
    assert_code(&out, 0);
    assert!(stderr(&out).contains("held by alice"), "{}", stderr(&out));
    assert_eq!(e.record(&lock), before);
    assert_code(&e.run("bob", &lock, &["release", "--strict"]), 72);
    assert_eq!(e.record(&lock)["Token"], g["token"]);
}

fn release_is_idempotent(b: Backend) {
    let Some(e) = Env::try_new(b, "idempotent") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("alice", &lock, &["release"]), 0); // never acquired
    e.json("alice", &lock, &["acquire"]);
    let (c1, r1) = e.json("alice", &lock, &["release"]);
    let (c2, r2) = e.json("alice", &lock, &["release"]);
    assert_eq!((c1, c2), (0, 0));
    assert_eq!(r1["release"]["result"], "released");
    assert_eq!(r2["release"]["result"], "not-held");
    let r = e.record(&lock);
    assert!(r.get("Owner").is_none() && r.get("Token").is_none(), "{r}");
}

fn force_after_takeover_raises_the_fence(b: Backend) {
    let Some(e) = Env::try_new(b, "force-after") else { return };
    let lock = e.lock("l");
    let (_, a) = e.json("alice", &lock, &["acquire", "--ttl", "1h"]);
    thread::sleep(Duration::from_millis(1500));
    // Within --force-after: no.
    assert_code(&e.run("bob", &lock, &["acquire", "--no-wait", "--force-after", "1h"]), 73);
    // --force-after 1s with the 2 s default margin: after ~3 s of age.
    let (code, g) = e.json(
        "bob",
        &lock,
        &["acquire", "--force-after", "1", "--retry-interval", "200ms", "--wait", "20s"],
    );
    assert_eq!(code, 0, "{g}");
    assert_eq!(g["how"]["kind"], "took-over");
    assert_eq!(g["how"]["from"], "alice");
    assert_eq!(fence(&g), fence(&a) + 1);
    let r = e.record(&lock);
    assert_eq!(r["History"].as_array().unwrap().last().unwrap()["Event"], "taken-over");
    // The old holder's release leaves the new holder alone, and fails: alice's pipeline ran
    // on without the lock (DESIGN "Leases in practice (v2)").
    let out = e.run("alice", &lock, &["release"]);
    assert_code(&out, 76);
    assert!(stderr(&out).contains("taken over by bob"), "{}", stderr(&out));
    assert_eq!(e.record(&lock)["Owner"], "bob");
}

fn ended_lease_is_taken_over(b: Backend) {
    let Some(e) = Env::try_new(b, "lease-ended") else { return };
    let lock = e.lock("l");
    let (_, a) = e.json("alice", &lock, &["acquire", "--ttl", "1s"]);
    let start = Instant::now();
    let (code, g) = e.json("bob", &lock, &["acquire", "--retry-interval", "200ms", "--wait", "30s"]);
    assert_eq!(code, 0, "{g}");
    assert_eq!(fence(&g), fence(&a) + 1);
    assert_eq!(g["how"]["kind"], "took-over");
    // Lease 1 s + margin 2 s (+ Date-header uncertainty): not before, not much after.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
}

fn disable_ttl_writes_no_lease_end(b: Backend) {
    let Some(e) = Env::try_new(b, "no-ttl") else { return };
    let lock = e.lock("l");
    let (code, g) = e.json("alice", &lock, &["acquire", "--disable-ttl"]);
    assert_eq!(code, 0);
    assert!(g["lease_expires_at"].is_null());
    let r = e.record(&lock);
    assert!(r.get("LeaseExpiresAt").is_none(), "{r}");
    assert!(
        r.get("ExpiresAt").is_none(),
        "a held lock without a lease must never be garbage-collected: {r}"
    );
    // Nobody can take it without --force-after or --force.
    assert_code(&e.run("bob", &lock, &["acquire", "--max-retries", "2", "--retry-interval", "100ms"]), 75);
}

fn no_wait_exits_73(b: Backend) {
    let Some(e) = Env::try_new(b, "no-wait") else { return };
    let lock = e.lock("l");
    e.json("alice", &lock, &["acquire"]);
    let out = e.run("bob", &lock, &["acquire", "--no-wait"]);
    assert_code(&out, 73);
    let err = stderr(&out);
    assert!(err.contains(&lock) && err.contains("alice") && err.contains(&e.store), "{err}");
}

fn max_retries_exits_75_with_progress(b: Backend) {
    let Some(e) = Env::try_new(b, "max-retries") else { return };
    let lock = e.lock("l");
    e.json("alice", &lock, &["acquire"]);
    let start = Instant::now();
    let out = e.run("bob", &lock, &["acquire", "--max-retries", "3", "--retry-interval", "100ms", "-v"]);
    assert_code(&out, 75);
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = stderr(&out);
    assert!(
        err.contains("waiting for lock") && err.contains("held by alice") && err.contains("attempt 3"),
        "{err}"
    );
    assert!(err.contains("lease left") && err.contains("takeover possible in"), "{err}");
    // --wait too.
    assert_code(&e.run("bob", &lock, &["acquire", "--wait", "1s", "--retry-interval", "200ms"]), 75);
}

fn fence_survives_release_and_reacquire(b: Backend) {
    let Some(e) = Env::try_new(b, "fence") else { return };
    let lock = e.lock("l");
    let mut last: Option<u64> = None;
    for owner in ["a", "b", "a", "c"] {
        let (code, g) = e.json(owner, &lock, &["acquire", "--no-wait"]);
        assert_eq!(code, 0, "{g}");
        // +1 per grant; a new record starts above its grant's store ms (DESIGN `Fence`, v2).
        match last {
            Some(f) => assert_eq!(fence(&g), f + 1, "{g}"),
            None => assert!(fence(&g) > g["acquired_at"].as_u64().unwrap(), "{g}"),
        }
        last = Some(fence(&g));
        assert_code(&e.run(owner, &lock, &["release"]), 0);
        assert_eq!(e.record(&lock)["Fence"].as_u64(), last);
    }
}

/// 20 processes at once: exactly one winner; again after a release.
fn twenty_contenders_one_winner(b: Backend) {
    let Some(e) = Env::try_new(b, "race") else { return };
    let lock = e.lock("l");
    let mut last: Option<u64> = None;
    for round in 0..2 {
        let children: Vec<_> = (0..20)
            .map(|i| {
                e.cmd()
                    .args([
                        "--owner",
                        &format!("racer-{round}-{i}"),
                        "--lock",
                        &lock,
                        "acquire",
                        "--no-wait",
                        "--output",
                        "json",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let winners: Vec<_> = outs.iter().filter(|o| o.status.code() == Some(0)).collect();
        let losers = outs.iter().filter(|o| o.status.code() == Some(73)).count();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} winners; codes {:?}",
            winners.len(),
            outs.iter().map(|o| o.status.code()).collect::<Vec<_>>()
        );
        assert_eq!(losers, 19);
        let g: serde_json::Value = serde_json::from_slice(&winners[0].stdout).unwrap();
        // One grant counted per round; a new record starts above its grant's store ms.
        match last {
            Some(f) => assert_eq!(fence(&g), f + 1, "round {round}: {g}"),
            None => assert!(fence(&g) > g["acquired_at"].as_u64().unwrap(), "round {round}: {g}"),
        }
        last = Some(fence(&g));
        assert_eq!(e.record(&lock)["Owner"], g["owner"]);
        assert_code(&e.run(g["owner"].as_str().unwrap(), &lock, &["release"]), 0);
    }
}

fn corrupt_record_is_never_free(b: Backend) {
    let Some(e) = Env::try_new(b, "corrupt") else { return };
    let lock = e.lock("l");
    plant_corrupt(&e, &lock);
    for args in [&["acquire", "--no-wait"][..], &["release"], &["status"]] {
        let out = e.run("alice", &lock, args);
        assert_code(&out, 78);
        let err = stderr(&out);
        assert!(
            err.contains(&lock) && err.contains(&e.store) && err.contains("release") && err.contains("--force"),
            "{err}"
        );
    }
    // Break glass clears it, keeping the fence from going back.
    assert_code(&e.run("alice", &lock, &["release", "--force", "--reason", "test"]), 0);
    let (code, g) = e.json("alice", &lock, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{g}");
    assert!(fence(&g) >= 8, "fence went back: {g}");
}

/// A record with a wrongly typed Fence (and no Rvn) where the lock lives.
fn plant_corrupt(e: &Env, lock: &str) {
    match e.backend {
        Backend::File => {
            let name = pipeline_lock::store::encode_name(lock);
            std::fs::write(e.dir.as_ref().unwrap().join(format!("{name}.lock")), br#"{"LockID":"x","Fence":"7"}"#).unwrap();
        }
        Backend::DynamoLocal | Backend::MotoDynamo => {
            use aws_sdk_dynamodb::types::AttributeValue as A;
            let client = support::dynamo_client(e.endpoint.as_ref().unwrap());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(
                client
                    .put_item()
                    .table_name(support::TABLE)
                    .item("LockID", A::S(lock.into()))
                    .item("Fence", A::N("7".into()))
                    .item("Owner", A::S("someone".into()))
                    .send(),
            )
            .unwrap();
        }
        Backend::MotoS3 => {
            let client = support::s3_client(e.endpoint.as_ref().unwrap());
            let (_, prefix) = e.store.trim_start_matches("s3://").split_once('/').unwrap();
            let key = format!("{prefix}/{}.lock", pipeline_lock::store::encode_name(lock));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(
                client
                    .put_object()
                    .bucket(support::BUCKET)
                    .key(key)
                    .body(b"{\"Fence\": 7, trunc".to_vec().into())
                    .send(),
            )
            .unwrap();
        }
    }
}

/// A runner whose clock is 10 minutes fast must not take a live lock; one 10 minutes slow
/// must take a lock whose lease ended. Times come from the store's clock, not the runner's.
fn skewed_clocks(b: Backend) {
    let Some(e) = Env::try_new(b, "skew") else { return };
    let lock = e.lock("l");
    let (_, a) = e.json("alice", &lock, &["acquire", "--ttl", "2s"]);
    let fast = e
        .cmd_with(Some("+10m"))
        .args(["--owner", "fast", "--lock", &lock, "acquire", "--no-wait"])
        .output()
        .unwrap();
    assert_code(&fast, 73);
    // A slow runner's own grant must carry store-clock times, or others would see it expired.
    let lock2 = e.lock("l2");
    let slow_grant = e
        .cmd_with(Some("-10m"))
        .args(["--owner", "slow", "--lock", &lock2, "acquire", "--ttl", "5m", "--output", "json"])
        .output()
        .unwrap();
    assert_code(&slow_grant, 0);
    assert_code(&e.run("bob", &lock2, &["acquire", "--no-wait"]), 73);
    // Alice's 2 s lease has ended by now. The slow runner waits (a busy single-threaded store
    // answers late, which widens its clock estimate and so its margin) but must get the lock
    // within seconds; by its own clock the lease would last ten more minutes.
    thread::sleep(Duration::from_millis(2500));
    let slow = e
        .cmd_with(Some("-10m"))
        .args([
            "--owner",
            "slow",
            "--lock",
            &lock,
            "acquire",
            "--wait",
            "60s", /* exit 75 if it trusted its own clock */
            "--retry-interval",
            "300ms",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_code(&slow, 0);
    let g: serde_json::Value = serde_json::from_slice(&slow.stdout).unwrap();
    assert_eq!(fence(&g), fence(&a) + 1);
    // By the store clock, not by watching the record go unrenewed (which needs no clock and
    // would let it in a few seconds later).
    assert_eq!(g["how"]["why"], "the lease ended", "{g}");
}

on_every_store!(
    grant,
    reentrance_keeps_the_fence,
    release_by_another_owner_changes_nothing,
    release_is_idempotent,
    force_after_takeover_raises_the_fence,
    ended_lease_is_taken_over,
    disable_ttl_writes_no_lease_end,
    no_wait_exits_73,
    max_retries_exits_75_with_progress,
    fence_survives_release_and_reacquire,
    twenty_contenders_one_winner,
    corrupt_record_is_never_free,
    skewed_clocks,
);
