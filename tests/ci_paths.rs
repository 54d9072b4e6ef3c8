//! The paths CI users really take (issue 10, DESIGN "Identity rules (v2)" and "Leases in
//! practice (v2)"): later jobs that inherit what `acquire` exported, parallel and matrix
//! `run`s, renew and release after a takeover, fences after deletion, waiters under faults and
//! signals, flags against the environment, names a store cannot hold. Each test here failed on
//! the version before v2. Real binary, real local servers, environments passed per process.

mod support;

#[allow(dead_code)]
#[path = "safety/checker.rs"]
mod checker;
#[allow(dead_code)]
#[path = "safety/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "safety/tools.rs"]
mod tools;

use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr, wait_until};

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// A GitLab job of pipeline `pipeline` in the test's own project (the default lock name).
fn gitlab(e: &Env, pipeline: &str, job: &str) -> Command {
    let mut c = e.cmd();
    c.env("GITLAB_CI", "true")
        .env("CI_SERVER_HOST", "gitlab.example.com")
        .env("CI_PROJECT_PATH", format!("group/{}", e.test))
        .env("CI_PIPELINE_ID", pipeline)
        .env("CI_PIPELINE_IID", pipeline)
        .env("CI_JOB_ID", job);
    c
}

/// A GitHub Actions job `job` of run `run`.
fn github(e: &Env, run: &str, job: &str) -> Command {
    let mut c = e.cmd();
    c.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_REPOSITORY", format!("org/{}", e.test))
        .env("GITHUB_RUN_ID", run)
        .env("GITHUB_RUN_NUMBER", run)
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("GITHUB_JOB", job);
    c
}

/// What `acquire --output env` printed (the GitLab dotenv report), as later jobs inherit it.
fn dotenv(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn record_of(e: &Env, lock: &str) -> serde_json::Value {
    e.record(lock)
}

/// A `run` whose command marks that it is inside, then stays a while.
fn spawn_inside(mut c: Command, marker: &std::path::Path, secs: u32) -> Child {
    let script = format!("echo in > {}; sleep {secs}", marker.display());
    c.args(["run", "--", "sh", "-c", &script]).stderr(Stdio::piped()).spawn().unwrap()
}

fn marker(e: &Env, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", e.test))
}

/// Item 1: the dotenv of an earlier `acquire` must not make two parallel job-scoped `run`s
/// of one pipeline the same owner.
fn an_inherited_owner_does_not_turn_off_job_scope(b: Backend) {
    let Some(e) = Env::try_new(b, "inherit") else { return };
    let first = gitlab(&e, "41", "1").args(["acquire", "--output", "env"]).output().unwrap();
    assert_code(&first, 0);
    let exported = dotenv(&first);
    assert!(exported.iter().any(|(k, _)| k == "PIPELINE_LOCK_OWNER"), "{exported:?}");
    let lock = e.lock("migrations");
    let inside = marker(&e, "job2");
    let mut job2 = gitlab(&e, "41", "2");
    job2.envs(exported.iter().map(|(k, v)| (k, v))).args(["--lock", &lock]);
    let holder = spawn_inside(job2, &inside, 4);
    wait_until("job 2 inside", Duration::from_secs(10), || inside.exists());
    let mut job3 = gitlab(&e, "41", "3");
    job3.envs(exported.iter().map(|(k, v)| (k, v)));
    let out = job3.args(["--lock", &lock, "run", "--no-wait", "--", "true"]).output().unwrap();
    assert_code(&out, 73);
    assert!(stderr(&out).contains("/jobs/2"), "job 3 should see job 2 as the holder: {}", stderr(&out));
    assert_code(&holder.wait_with_output().unwrap(), 0);
}

/// Item 2: `run` in a later job of the pipeline that holds the lock says so at once and
/// leaves the pipeline's grant alone.
fn run_stops_at_once_on_its_own_pipelines_grant(b: Backend) {
    let Some(e) = Env::try_new(b, "own-pipeline") else { return };
    let first = gitlab(&e, "42", "1").args(["acquire", "--output", "env"]).output().unwrap();
    assert_code(&first, 0);
    let exported = dotenv(&first);
    let lock = exported.iter().find(|(k, _)| k == "PIPELINE_LOCK_NAME").unwrap().1.clone();
    let before = record_of(&e, &lock);
    let start = Instant::now();
    let mut later = gitlab(&e, "42", "2");
    let out = later
        .envs(exported.iter().map(|(k, v)| (k, v)))
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_code(&out, 73);
    assert!(start.elapsed() < Duration::from_secs(5), "it waited on itself: {:?}", start.elapsed());
    let err = stderr(&out);
    assert!(err.contains("pipelines/42") && err.contains("--scope pipeline"), "{err}");
    let after = record_of(&e, &lock);
    assert_eq!(
        (&after["Owner"], &after["Token"], &after["Fence"]),
        (&before["Owner"], &before["Token"], &before["Fence"])
    );
    // Another pipeline still finds the lock held.
    assert_code(&gitlab(&e, "43", "1").args(["acquire", "--no-wait"]).output().unwrap(), 73);
}

/// Item 3: two legs of one matrix job (same GITHUB_JOB, no index passed) never share a grant.
fn github_matrix_legs_exclude_each_other(b: Backend) {
    let Some(e) = Env::try_new(b, "matrix") else { return };
    let lock = e.lock("l");
    let inside = marker(&e, "leg0");
    let mut leg0 = github(&e, "77", "test");
    leg0.args(["--lock", &lock]);
    let holder = spawn_inside(leg0, &inside, 4);
    wait_until("leg 0 inside", Duration::from_secs(10), || inside.exists());
    let out = github(&e, "77", "test")
        .args(["--lock", &lock, "run", "--no-wait", "--", "true"])
        .output()
        .unwrap();
    assert_code(&out, 73);
    assert_code(&holder.wait_with_output().unwrap(), 0);
    // With the index the workflow passes, the legs are different owners.
    let out = github(&e, "77", "test")
        .env("PIPELINE_LOCK_MATRIX_INDEX", "1")
        .args(["--lock", &lock, "run", "--", "sh", "-c", "echo $PIPELINE_LOCK_OWNER"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).trim().ends_with("/matrix/1"), "{out:?}");
}

/// Deletes the lock's record behind the tool's back, as DynamoDB's TTL or an operator would.
fn delete_record(e: &Env, lock: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match e.backend {
        Backend::File => {
            let path = e.dir.as_ref().unwrap().join(format!("{}.lock", pipeline_lock::store::encode_name(lock)));
            std::fs::remove_file(&path).unwrap();
        }
        Backend::DynamoLocal | Backend::MotoDynamo => {
            let client = support::dynamo_client(e.endpoint.as_deref().unwrap());
            let key = aws_sdk_dynamodb::types::AttributeValue::S(lock.to_string());
            rt.block_on(client.delete_item().table_name(support::TABLE).key("LockID", key).send())
                .unwrap();
        }
        Backend::MotoS3 => {
            let client = support::s3_client(e.endpoint.as_deref().unwrap());
            let key = format!("{}/{}.lock", e.test, pipeline_lock::store::encode_name(lock));
            rt.block_on(client.delete_object().bucket(support::BUCKET).key(key).send()).unwrap();
        }
    }
    let (code, v) = e.json("observer", lock, &["status"]);
    assert_eq!((code, v["state"].as_str()), (0, Some("absent")), "{v}");
}

/// Item 5: a record deleted under the lock (TTL, an operator) does not send fences back.
fn fences_never_go_back_after_the_record_is_deleted(b: Backend) {
    let Some(e) = Env::try_new(b, "fence-gone") else { return };
    let lock = e.lock("l");
    let mut highest = 0;
    for owner in ["a", "b", "c"] {
        let (code, g) = e.json(owner, &lock, &["acquire", "--no-wait"]);
        assert_eq!(code, 0, "{g}");
        highest = g["fence"].as_u64().unwrap();
        assert_code(&e.run(owner, &lock, &["release"]), 0);
    }
    delete_record(&e, &lock);
    let (code, g) = e.json("d", &lock, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{g}");
    assert!(g["fence"].as_u64().unwrap() > highest, "fence went back: {} after {highest}", g["fence"]);
}

/// Item 5: ExpiresAt comes from the store clock, never from the releasing runner's own.
fn a_tombstone_outlives_a_runner_whose_clock_is_a_month_behind(b: Backend) {
    let Some(e) = Env::try_new(b, "tombstone-clock") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("a", &lock, &["acquire", "--no-wait"]), 0);
    let out = e
        .cmd_with(Some("-31d"))
        .args(["--owner", "a", "--lock", &lock, "release"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let r = record_of(&e, &lock);
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let expires = r["ExpiresAt"].as_i64().unwrap();
    assert!(
        expires > now_s + 29 * 86_400,
        "ExpiresAt {expires} is not ~30 days after now {now_s}: {r}"
    );
}

/// Item 6: `renew` without `--ttl` keeps the grant's lease; it never adds an end.
fn renew_keeps_the_grants_own_lease(b: Backend) {
    let Some(e) = Env::try_new(b, "renew-keep") else { return };
    let lock = e.lock("l");
    let (code, g) = e.json("a", &lock, &["acquire", "--ttl", "4h"]);
    assert_eq!(code, 0, "{g}");
    let end = g["lease_expires_at"].as_i64().unwrap();
    let (code, r) = e.json("a", &lock, &["renew"]);
    assert_eq!(code, 0, "{r}");
    assert!(r["lease_expires_at"].as_i64().unwrap() >= end, "renew shortened the lease: {r} after {g}");
    let other = e.lock("no-ttl");
    assert_code(&e.run("a", &other, &["acquire", "--disable-ttl"]), 0);
    let (code, r) = e.json("a", &other, &["renew"]);
    assert_eq!(code, 0, "{r}");
    assert!(
        record_of(&e, &other).get("LeaseExpiresAt").is_none(),
        "renew gave a --disable-ttl grant a lease end"
    );
}

/// Item 7: a stale exported token falls back to the owner, as release does.
fn renew_with_a_stale_token_finds_the_grant_by_owner(b: Backend) {
    let Some(e) = Env::try_new(b, "renew-stale") else { return };
    let (code, g1) = {
        let out = github(&e, "888", "deploy").args(["acquire", "--output", "json"]).output().unwrap();
        (
            out.status.code().unwrap(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        )
    };
    assert_eq!(code, 0);
    assert_code(&github(&e, "888", "deploy").args(["release"]).output().unwrap(), 0);
    assert_code(&github(&e, "888", "deploy").args(["acquire"]).output().unwrap(), 0);
    let stale = g1["token"].as_str().unwrap();
    let out = github(&e, "888", "deploy")
        .env("PIPELINE_LOCK_TOKEN", stale)
        .args(["renew"])
        .output()
        .unwrap();
    assert_code(&out, 0);
}

/// Item 8: a pipeline whose lease ran out and was taken over must go red on release.
fn release_of_a_grant_taken_over_exits_76(b: Backend) {
    let Some(e) = Env::try_new(b, "taken-release") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("first", &lock, &["acquire", "--ttl", "1s", "--clock-margin", "0s"]), 0);
    let (code, g) = e.json(
        "second",
        &lock,
        &["acquire", "--retry-interval", "200ms", "--wait", "20s", "--clock-margin", "0s"],
    );
    assert_eq!(code, 0, "{g}");
    assert_eq!(g["how"]["kind"], "took-over");
    let out = e.run("first", &lock, &["release"]);
    assert_code(&out, 76);
    let err = stderr(&out);
    assert!(err.contains("taken over by second"), "{err}");
    assert_eq!(record_of(&e, &lock)["Owner"], "second", "the taker's grant was touched");
    // Never ours, or released by us before: still a quiet success.
    assert_code(&e.run("second", &lock, &["release"]), 0);
    assert_code(&e.run("second", &lock, &["release"]), 0);
    assert_code(&e.run("never", &lock, &["release"]), 0);
}

/// Item 9: `--force-after` counts from the last renewal: a renewing holder stays.
fn force_after_never_evicts_a_renewing_holder(b: Backend) {
    let Some(e) = Env::try_new(b, "force-after-live") else { return };
    let lock = e.lock("l");
    let holder = e
        .cmd()
        .args(["--owner", "holder", "--lock", &lock, "run", "--ttl", "3s", "--clock-margin", "200ms"])
        .args(["--kill-grace", "500ms", "--heartbeat", "400ms", "--", "sleep", "7"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || record_of(&e, &lock).get("Owner").is_some());
    let out = e.run(
        "waiter",
        &lock,
        &["acquire", "--force-after", "1s", "--retry-interval", "200ms", "--wait", "5s"],
    );
    assert_code(&out, 75);
    assert_code(&holder.wait_with_output().unwrap(), 0);
}

/// Item 11: SIGTERM to a waiting acquire takes its entry out of the queue before it exits.
fn a_signalled_waiter_leaves_the_queue(b: Backend) {
    let Some(e) = Env::try_new(b, "sig-waiter") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let waiter = e
        .cmd()
        .args(["--owner", "waiter", "--lock", &lock, "acquire", "--retry-interval", "300ms"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the waiter's entry", Duration::from_secs(10), || {
        record_of(&e, &lock).get("Waiters").is_some_and(|w| !w.as_object().unwrap().is_empty())
    });
    signal(&waiter, libc::SIGTERM);
    let out = waiter.wait_with_output().unwrap();
    assert_code(&out, 143);
    assert!(
        record_of(&e, &lock).get("Waiters").is_none_or(|w| w.as_object().unwrap().is_empty()),
        "entry left behind"
    );
}

/// Item 12: a waiter polling once a minute, queued first, is not pruned by a fast one.
fn a_slow_poller_keeps_its_place(b: Backend) {
    let Some(e) = Env::try_new(b, "slow-poller") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let mut slow = e
        .cmd()
        .args([
            "--owner",
            "slow",
            "--lock",
            &lock,
            "acquire",
            "--retry-interval",
            "60s",
            "--prune-floor",
            "1s",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the slow entry", Duration::from_secs(10), || {
        record_of(&e, &lock).get("Waiters").is_some()
    });
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    let out = e.run(
        "fast",
        &lock,
        &["acquire", "--retry-interval", "1s", "--prune-floor", "1s", "--wait", "6s"],
    );
    assert_code(&out, 75);
    assert!(stderr(&out).contains("slow"), "{}", stderr(&out));
    signal(&slow, libc::SIGTERM);
    assert_eq!(slow.wait().unwrap().code(), Some(143));
}

/// Item 13: the flag on the command line beats the opposite option's environment variable.
fn an_explicit_flag_beats_the_environment(b: Backend) {
    let Some(e) = Env::try_new(b, "flag-env") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let start = Instant::now();
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_WAIT", "10m")
        .args(["--owner", "o", "--lock", &lock, "acquire", "--no-wait"])
        .output()
        .unwrap();
    assert_code(&out, 73);
    assert!(start.elapsed() < Duration::from_secs(5));
    let other = e.lock("ttl");
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_TTL", "1h")
        .args(["--owner", "o", "--lock", &other, "acquire", "--disable-ttl"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(record_of(&e, &other).get("LeaseExpiresAt").is_none());
    let store = e.store.clone();
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_TABLE", "some-other-table")
        .args(["--store", &store, "--owner", "o", "--lock", &other, "status"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    // Both on the command line is still a usage error.
    assert_code(&e.run("o", &other, &["acquire", "--wait", "1s", "--no-wait"]), 2);
}

/// Item 14: `run`'s default lease is minutes, so a killed `run` does not block its re-run for an hour.
fn runs_default_lease_is_short(b: Backend) {
    let Some(e) = Env::try_new(b, "run-lease") else { return };
    let lock = e.lock("l");
    let script = "echo $PIPELINE_LOCK_FENCE";
    let holder = e
        .cmd()
        .args(["--owner", "job", "--lock", &lock, "run", "--", "sh", "-c", &format!("{script}; sleep 2")])
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || record_of(&e, &lock).get("Owner").is_some());
    let r = record_of(&e, &lock);
    let lease = r["LeaseExpiresAt"].as_i64().unwrap() - r["RenewedAt"].as_i64().unwrap();
    assert!((60_000..=300_000).contains(&lease), "run's default lease is {lease} ms: {r}");
    assert_code(&holder.wait_with_output().unwrap(), 0);
}

/// Item 15: a name the store cannot hold is refused before any request, naming the limit.
fn names_a_store_cannot_hold_are_refused_up_front(b: Backend) {
    let Some(e) = Env::try_new(b, "long-name") else { return };
    let name = format!("{}/{}", e.test, "x/".repeat(340));
    let out = e.run("o", &name, &["acquire", "--no-wait"]);
    let expect = match b {
        Backend::File => Some("255"),
        Backend::MotoS3 => Some("1024"),
        _ => None,
    };
    match expect {
        Some(limit) => {
            assert_code(&out, 2);
            let err = stderr(&out);
            assert!(err.contains(limit) && err.contains(&e.store), "{err}");
            assert!(String::from_utf8_lossy(&out.stdout).is_empty());
        }
        // DynamoDB holds keys up to 2048 bytes: the name (under the 1024 every name is held to) works.
        None => assert_code(&out, 0),
    }
}

on_every_store!(
    an_inherited_owner_does_not_turn_off_job_scope,
    run_stops_at_once_on_its_own_pipelines_grant,
    github_matrix_legs_exclude_each_other,
    fences_never_go_back_after_the_record_is_deleted,
    renew_keeps_the_grants_own_lease,
    renew_with_a_stale_token_finds_the_grant_by_owner,
    release_of_a_grant_taken_over_exits_76,
    force_after_never_evicts_a_renewing_holder,
    a_signalled_waiter_leaves_the_queue,
    a_slow_poller_keeps_its_place,
    an_explicit_flag_beats_the_environment,
    runs_default_lease_is_short,
    names_a_store_cannot_hold_are_refused_up_front,
);

#[test]
fn a_tombstone_outlives_a_runner_whose_clock_is_a_month_behind_dynamodb_local() {
    a_tombstone_outlives_a_runner_whose_clock_is_a_month_behind(Backend::DynamoLocal);
}

#[test]
fn a_tombstone_outlives_a_runner_whose_clock_is_a_month_behind_moto_s3() {
    a_tombstone_outlives_a_runner_whose_clock_is_a_month_behind(Backend::MotoS3);
}

/// Item 5, with the clock: a record recreated by a runner a month behind still fences above
/// what the lock had before it was deleted.
#[test]
fn a_recreated_record_fences_above_the_old_one_even_from_a_clock_a_month_behind() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "fence-clock") else {
        return;
    };
    let lock = e.lock("l");
    let (code, g) = e.json("a", &lock, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{g}");
    assert_code(&e.run("a", &lock, &["release"]), 0);
    delete_record(&e, &lock);
    let out = e
        .cmd_with(Some("-31d"))
        .args(["--owner", "b", "--lock", &lock, "acquire", "--no-wait", "--output", "json"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let g2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(g2["fence"].as_u64() > g["fence"].as_u64(), "fence went back: {g2} after {g}");
}

/// Item 4: the command of a holder cut off from its store is dead (KILL) by the lease end
/// minus the margin, even when it traps TERM, so its last write comes before a taker's first.
#[test]
fn a_child_that_traps_term_is_dead_before_a_taker_enters() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "trap-term") else {
        return;
    };
    let lock = e.lock("l");
    let log = marker(&e, "writes");
    let upstream = e.endpoint.clone().expect("DynamoDB Local endpoint");
    let proxy = helpers::Proxy::start(upstream.trim_start_matches("http://"));
    let writer = format!(
        "trap '' TERM; while true; do echo \"holder $(date +%s%3N)\" >> {}; sleep 0.05; done",
        log.display()
    );
    let holder = e
        .cmd()
        .env("PIPELINE_LOCK_ENDPOINT_URL", proxy.url())
        .args(["--owner", "holder", "--lock", &lock, "run", "--ttl", "8s", "--clock-margin", "500ms"])
        .args(["--kill-grace", "5s", "--heartbeat", "1s", "--", "sh", "-c", &writer])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || record_of(&e, &lock).get("Owner").is_some());
    sleep(Duration::from_millis(1300));
    proxy.command("set blackhole 1");
    let taker = format!("echo \"taker $(date +%s%3N)\" >> {}", log.display());
    let out = e
        .cmd()
        .args([
            "--owner",
            "taker",
            "--lock",
            &lock,
            "run",
            "--retry-interval",
            "200ms",
            "--wait",
            "40s",
            "--",
        ])
        .args(["sh", "-c", &taker])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let held = holder.wait_with_output().unwrap();
    proxy.command("set pass");
    assert_code(&held, 76);
    let text = std::fs::read_to_string(&log).unwrap();
    let at = |who: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(who))
            .map(|t| t.trim().parse().unwrap())
            .collect()
    };
    let (holder_writes, taker_writes) = (at("holder "), at("taker "));
    let last = *holder_writes.iter().max().unwrap();
    let first = *taker_writes.iter().min().unwrap();
    assert!(
        last < first,
        "the holder's command wrote {} ms after the taker entered:\n{text}",
        last - first
    );
}

/// Item 10: a waiter rides out a store that fails for a while, until its own --wait.
#[test]
fn a_waiter_rides_out_a_store_outage() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "outage") else { return };
    let lock = e.lock("l");
    let upstream = e.endpoint.clone().expect("DynamoDB Local endpoint");
    let proxy = helpers::Proxy::start(upstream.trim_start_matches("http://"));
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let waiter = e
        .cmd()
        .env("PIPELINE_LOCK_ENDPOINT_URL", proxy.url())
        .args([
            "--owner",
            "waiter",
            "--lock",
            &lock,
            "acquire",
            "--retry-interval",
            "300ms",
            "--wait",
            "60s",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the waiter's entry", Duration::from_secs(10), || {
        record_of(&e, &lock).get("Waiters").is_some()
    });
    proxy.command("set fail 1");
    sleep(Duration::from_secs(4));
    proxy.command("set pass");
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    let out = waiter.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert!(stderr(&out).contains("the store is failing"), "{}", stderr(&out));
    assert_eq!(record_of(&e, &lock)["Owner"], "waiter");
}
