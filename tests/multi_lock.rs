//! Several locks at once (`--lock A --lock B`, docs/design.md, "Several locks at once (v2)")
//! on every store, with the real binary: all or none, give-back when one is busy, no deadlock
//! between waiters that name the locks in opposite orders, the lists of release, renew and
//! status, and the exported list a later job reads.

mod support;

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr};

fn lock_args<'a>(owner: &'a str, locks: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["--owner", owner];
    for l in locks {
        args.extend(["--lock", l.as_str()]);
    }
    args
}

fn multi(e: &Env, owner: &str, locks: &[String], args: &[&str]) -> Output {
    e.cmd().args(lock_args(owner, locks)).args(args).output().unwrap()
}

fn multi_json(e: &Env, owner: &str, locks: &[String], args: &[&str]) -> (i32, serde_json::Value) {
    let out = e
        .cmd()
        .args(lock_args(owner, locks))
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON: {out:?}"));
    (out.status.code().unwrap_or(-1), v)
}

fn spawn_multi(e: &Env, owner: &str, locks: &[String], args: &[&str]) -> Child {
    e.cmd()
        .args(lock_args(owner, locks))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Who holds `lock` (exclusively), per `status`.
fn holder(e: &Env, lock: &str) -> Option<String> {
    e.record(lock)["Owner"].as_str().map(str::to_string)
}

fn names(e: &Env, suffixes: &[&str]) -> Vec<String> {
    suffixes.iter().map(|s| e.lock(s)).collect()
}

fn takes_every_lock_in_one_request_where_the_store_can(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-all") else { return };
    let locks = names(&e, &["db", "cache", "queue"]);
    let (code, v) = multi_json(&e, "a", &locks, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{v}");
    let grants = v["locks"].as_array().expect("a grant per lock");
    let mut sorted = locks.clone();
    sorted.sort();
    let granted: Vec<&str> = grants.iter().map(|g| g["lock"].as_str().unwrap()).collect();
    assert_eq!(granted, sorted.iter().map(String::as_str).collect::<Vec<_>>(), "{v}");
    for lock in &locks {
        assert_eq!(holder(&e, lock).as_deref(), Some("a"), "{lock}");
    }
    // DynamoDB: one TransactWriteItems, and one TransactGetItems for the fences. The
    // whole-object stores: what a single lock's first try costs, per lock (S3: a GET and a
    // conditional PUT; the file store: one conditional write).
    let k = locks.len() as u64;
    let want = match b {
        Backend::DynamoLocal | Backend::MotoDynamo => 2,
        Backend::MotoS3 => 2 * k,
        Backend::File => k,
    };
    assert_eq!(v["requests"].as_u64(), Some(want), "{v}");
    // Each lock's fence is the one its record holds.
    for g in grants {
        let r = e.record(g["lock"].as_str().unwrap());
        assert_eq!(r["Fence"], g["fence"], "{g}");
    }
    // Release and status take the same list.
    let (code, v) = multi_json(&e, "a", &locks, &["status"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["locks"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["locks"].as_array().unwrap().iter().all(|s| s["state"] == "held"), "{v}");
    let (code, v) = multi_json(&e, "a", &locks, &["renew", "--ttl", "10m"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["locks"].as_array().map(Vec::len), Some(3), "{v}");
    let (code, v) = multi_json(&e, "a", &locks, &["release"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["locks"].as_array().unwrap().iter().all(|r| r["release"]["result"] == "released"), "{v}");
    for lock in &locks {
        assert_eq!(holder(&e, lock), None, "{lock}");
    }
}

fn one_busy_lock_means_none_is_taken(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-none") else { return };
    let locks = names(&e, &["a", "b", "c"]);
    assert_code(&e.run("other", &locks[1], &["acquire"]), 0);
    let out = multi(&e, "me", &locks, &["acquire", "--no-wait"]);
    assert_code(&out, 73);
    assert!(stderr(&out).contains(&locks[1]), "{}", stderr(&out));
    // The lock before the busy one in sorted order was taken and given back; the one after
    // never was; the busy one is untouched.
    assert_eq!(holder(&e, &locks[0]), None);
    assert_eq!(holder(&e, &locks[2]), None);
    assert_eq!(holder(&e, &locks[1]).as_deref(), Some("other"));
}

fn a_lock_already_ours_is_not_given_back(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-reenter") else { return };
    let locks = names(&e, &["a", "b"]);
    // An earlier job of this pipeline took `a`; `b` is someone else's.
    assert_code(&e.run("me", &locks[0], &["acquire"]), 0);
    assert_code(&e.run("other", &locks[1], &["acquire"]), 0);
    let out = multi(&e, "me", &locks, &["acquire", "--no-wait"]);
    assert_code(&out, 73);
    assert_eq!(holder(&e, &locks[0]).as_deref(), Some("me"), "the earlier job's grant stays");
    // Once `b` is free, the same request re-enters `a` (same fence) and takes `b`.
    let fence_a = e.record(&locks[0])["Fence"].clone();
    assert_code(&e.run("other", &locks[1], &["release"]), 0);
    let (code, v) = multi_json(&e, "me", &locks, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["locks"][0]["fence"], fence_a, "{v}");
    assert_eq!(v["locks"][0]["how"]["kind"], "reentered", "{v}");
}

fn waits_for_the_busy_lock_then_takes_them_all(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-wait") else { return };
    let locks = names(&e, &["x", "y"]);
    assert_code(&e.run("other", &locks[1], &["acquire"]), 0);
    let waiter = spawn_multi(
        &e,
        "me",
        &locks,
        &["acquire", "--wait", "60s", "--retry-interval", "200ms", "--output", "json"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    // While it waits it holds nothing: `x` is free for anyone.
    assert_eq!(holder(&e, &locks[0]), None, "a waiting multi-lock request must hold nothing");
    assert_code(&e.run("other", &locks[1], &["release"]), 0);
    let out = waiter.wait_with_output().unwrap();
    assert_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["locks"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(holder(&e, &locks[0]).as_deref(), Some("me"));
    assert_eq!(holder(&e, &locks[1]).as_deref(), Some("me"));
}

fn runs_in_opposite_orders_never_deadlock_nor_overlap(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-order") else { return };
    let (a, bb) = (e.lock("a"), e.lock("b"));
    let log = std::env::temp_dir().join(format!("{}-runs.log", e.test.replace('/', "-")));
    let _ = std::fs::remove_file(&log);
    // Each command logs its start and end; two multi-lock runs that name the locks in
    // opposite orders both finish, one after the other.
    let script = format!("echo start $$ >> {0}; sleep 1; echo end $$ >> {0}", log.display());
    let started = Instant::now();
    let runs: Vec<Child> = [[&a, &bb], [&bb, &a]]
        .iter()
        .enumerate()
        .map(|(i, order)| {
            let locks = [order[0].clone(), order[1].clone()];
            let owner = format!("p{i}");
            let mut args = lock_args(&owner, &locks);
            args.extend(["run", "--wait", "60s", "--retry-interval", "200ms", "--", "sh", "-c", &script]);
            e.cmd()
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        assert_code(&run.wait_with_output().unwrap(), 0);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    // Never two inside at once: each start is followed by its own end.
    for pair in lines.chunks(2) {
        let (s, f) = (pair[0].strip_prefix("start "), pair[1].strip_prefix("end "));
        assert!(s.is_some() && s == f, "overlap: {lines:?}");
    }
    let _ = std::fs::remove_file(&log);
}

fn a_later_job_releases_the_exported_list(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-export") else { return };
    let locks = names(&e, &["one", "two"]);
    let out = multi(&e, "me", &locks, &["acquire", "--output", "env"]);
    assert_code(&out, 0);
    let dotenv = String::from_utf8_lossy(&out.stdout).to_string();
    let var = |name: &str| {
        dotenv
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {dotenv}"))
            .to_string()
    };
    let listed: Vec<String> = serde_json::from_str(&var("PIPELINE_LOCK_NAMES")).unwrap();
    let mut sorted = locks.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    let fences: serde_json::Value = serde_json::from_str(&var("PIPELINE_LOCK_FENCES")).unwrap();
    for lock in &locks {
        assert_eq!(fences[lock], e.record(lock)["Fence"], "{dotenv}");
    }
    assert!(!dotenv.contains("PIPELINE_LOCK_NAME="), "{dotenv}");
    // The later job has only the dotenv: no --lock.
    let out = e
        .cmd()
        .args(["--owner", "me", "release"])
        .env("PIPELINE_LOCK_NAMES", var("PIPELINE_LOCK_NAMES"))
        .output()
        .unwrap();
    assert_code(&out, 0);
    for lock in &locks {
        assert_eq!(holder(&e, lock), None, "{lock}");
    }
    // A malformed list is a usage error that names the variable.
    let out = e
        .cmd()
        .args(["--owner", "me", "release"])
        .env("PIPELINE_LOCK_NAMES", "one,two")
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(stderr(&out).contains("PIPELINE_LOCK_NAMES"), "{}", stderr(&out));
}

fn run_gives_the_command_every_fence(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-run") else { return };
    let locks = names(&e, &["p", "q"]);
    let out = multi(
        &e,
        "me",
        &locks,
        &["run", "--", "sh", "-c", "echo \"$PIPELINE_LOCK_NAMES|$PIPELINE_LOCK_FENCES\""],
    );
    assert_code(&out, 0);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (listed, fences) = line.split_once('|').unwrap();
    let listed: Vec<String> = serde_json::from_str(listed).unwrap();
    assert_eq!(listed.len(), 2, "{line}");
    let fences: serde_json::Value = serde_json::from_str(fences).unwrap();
    for lock in &locks {
        assert!(fences[lock].as_u64().is_some(), "{line}");
        assert_eq!(holder(&e, lock), None, "released after the command: {lock}");
    }
}

fn a_bad_list_is_refused_before_any_request(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-bad") else { return };
    let l = e.lock("dup");
    let out = multi(&e, "me", &[l.clone(), l.clone()], &["acquire"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("named twice"), "{}", stderr(&out));
    let many: Vec<String> = (0..101).map(|i| e.lock(&format!("n{i}"))).collect();
    let out = multi(&e, "me", &many, &["acquire"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("at most 100"), "{}", stderr(&out));
    let (code, v) = e.json("observer", &l, &["status"]);
    assert_eq!((code, v["state"].as_str()), (0, Some("absent")), "{v}");
    assert_eq!(e.json("observer", &many[0], &["status"]).1["state"], "absent");
}

fn a_shared_request_takes_a_slot_of_each_pool(b: Backend) {
    let Some(e) = Env::try_new(b, "multi-shared") else { return };
    let locks = names(&e, &["r1", "r2"]);
    for owner in ["a", "b"] {
        let (code, v) = multi_json(&e, owner, &locks, &["acquire", "--slots", "2", "--shared", "--no-wait"]);
        assert_eq!(code, 0, "{v}");
        assert!(v["locks"].as_array().unwrap().iter().all(|g| g["shared"] == true), "{v}");
    }
    // Both pools are full: a third shared request takes neither.
    let out = multi(&e, "c", &locks, &["acquire", "--slots", "2", "--shared", "--no-wait"]);
    assert_code(&out, 73);
    for lock in &locks {
        let r = e.record(lock);
        let mut owners: Vec<&str> = r["Shared"].as_object().unwrap().values().map(|h| h["Owner"].as_str().unwrap()).collect();
        owners.sort();
        assert_eq!(owners, ["a", "b"], "{r}");
    }
}

on_every_store!(
    a_shared_request_takes_a_slot_of_each_pool,
    takes_every_lock_in_one_request_where_the_store_can,
    one_busy_lock_means_none_is_taken,
    a_lock_already_ours_is_not_given_back,
    waits_for_the_busy_lock_then_takes_them_all,
    runs_in_opposite_orders_never_deadlock_nor_overlap,
    a_later_job_releases_the_exported_list,
    run_gives_the_command_every_fence,
    a_bad_list_is_refused_before_any_request,
);
