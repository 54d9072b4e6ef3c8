//! `pipeline-lock run -- CMD` on every store: exit codes, environment, heartbeats, signals,
//! a paused holder losing its lease, a killed holder taken over.

mod support;

use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr, wait_until};

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn run_args<'a>(extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run"];
    v.extend(extra);
    v.push("--");
    v.extend(cmd);
    v
}

fn passes_exit_codes(b: Backend) {
    let Some(e) = Env::try_new(b, "run-codes") else { return };
    let lock = e.lock("l");
    for (script, code) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -KILL $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let out = e.run("job", &lock, &run_args(&[], &["sh", "-c", script]));
        assert_code(&out, code);
        // Released each time: the next owner gets it at once.
        assert!(e.record(&lock).get("Owner").is_none(), "{script}: lock still held");
    }
}

fn gives_the_child_its_lock(b: Backend) {
    let Some(e) = Env::try_new(b, "run-env") else { return };
    let lock = e.lock("l");
    let out = e.run(
        "job",
        &lock,
        &run_args(
            &[],
            &[
                "sh",
                "-c",
                "echo $PIPELINE_LOCK_NAME,$PIPELINE_LOCK_OWNER,$PIPELINE_LOCK_FENCE,${#PIPELINE_LOCK_TOKEN}",
            ],
        ),
    );
    assert_code(&out, 0);
    let fence = e.record(&lock)["Fence"].as_u64().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{lock},job,{fence},32"));
}

fn heartbeats_keep_a_short_lease_alive(b: Backend) {
    let Some(e) = Env::try_new(b, "run-heartbeat") else { return };
    let lock = e.lock("l");
    let mut holder = e
        .cmd()
        .args(["--owner", "job", "--lock", &lock])
        .args(run_args(
            &["--ttl", "2s", "--clock-margin", "200ms", "--kill-grace", "500ms"],
            &["sleep", "6"],
        ))
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || e.record(&lock).get("Owner").is_some());
    let fence = e.record(&lock)["Fence"].clone();
    // Past three leases, nobody can take it, because it is renewed.
    for _ in 0..5 {
        sleep(Duration::from_millis(1000));
        assert_code(&e.run("other", &lock, &["acquire", "--no-wait"]), 73);
    }
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    let r = e.record(&lock);
    assert_eq!(r["Fence"], fence);
    assert!(r.get("Owner").is_none(), "released after the command: {r}");
}

fn sigterm_reaches_the_child_and_frees_the_lock(b: Backend) {
    let Some(e) = Env::try_new(b, "run-sigterm") else { return };
    let lock = e.lock("l");
    let marker = std::env::temp_dir().join(format!("{}-term", e.lock("m").replace('/', "_")));
    let script = format!("trap 'echo got-term > {}; exit 7' TERM; while true; do sleep 0.1; done", marker.display());
    let mut holder = e
        .cmd()
        .args(["--owner", "job", "--lock", &lock])
        .args(run_args(&[], &["sh", "-c", &script]))
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || e.record(&lock).get("Owner").is_some());
    sleep(Duration::from_millis(300));
    signal(&holder, libc::SIGTERM);
    assert_eq!(holder.wait().unwrap().code(), Some(7));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "got-term");
    assert!(e.record(&lock).get("Owner").is_none());
}

/// A holder frozen past its lease loses the lock to a waiter; when it wakes it must stop
/// its command and exit 76 without touching the new holder's record.
fn a_paused_holder_loses_its_lease(b: Backend) {
    let Some(e) = Env::try_new(b, "run-sigstop") else { return };
    let lock = e.lock("l");
    let holder = e
        .cmd()
        .args(["--owner", "holder", "--lock", &lock])
        .args(run_args(
            &["--ttl", "2s", "--clock-margin", "200ms", "--kill-grace", "1s"],
            &["sleep", "60"],
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || e.record(&lock).get("Owner").is_some());
    let first = e.record(&lock)["Fence"].as_u64().unwrap();
    signal(&holder, libc::SIGSTOP);
    let (code, g) = e.json("taker", &lock, &["acquire", "--retry-interval", "200ms", "--wait", "30s"]);
    assert_eq!(code, 0, "{g}");
    assert_eq!(g["fence"].as_u64(), Some(first + 1));
    let taken = e.record(&lock);
    signal(&holder, libc::SIGCONT);
    let start = Instant::now();
    let out = holder.wait_with_output().unwrap();
    assert_code(&out, 76);
    assert!(start.elapsed() < Duration::from_secs(15));
    let err = stderr(&out);
    assert!(err.contains("held by taker") && err.contains("stopping the command"), "{err}");
    assert_eq!(e.record(&lock), taken, "the new holder's record was touched");
}

fn a_killed_holder_is_taken_over_after_its_lease(b: Backend) {
    let Some(e) = Env::try_new(b, "run-sigkill") else { return };
    let lock = e.lock("l");
    let mut holder = e
        .cmd()
        .args(["--owner", "holder", "--lock", &lock])
        .args(run_args(
            &["--ttl", "2s", "--clock-margin", "200ms", "--kill-grace", "500ms"],
            &["sleep", "60"],
        ))
        .spawn()
        .unwrap();
    wait_until("the grant", Duration::from_secs(10), || e.record(&lock).get("Owner").is_some());
    signal(&holder, libc::SIGKILL);
    holder.wait().unwrap();
    let start = Instant::now();
    let (code, g) = e.json("next", &lock, &["acquire", "--retry-interval", "200ms", "--wait", "30s"]);
    assert_eq!(code, 0, "{g}");
    assert_eq!(g["how"]["kind"], "took-over");
    assert!(start.elapsed() < Duration::from_secs(8), "{:?}", start.elapsed());
}

fn bad_commands(b: Backend) {
    let Some(e) = Env::try_new(b, "run-bad") else { return };
    let lock = e.lock("l");
    let out = e.run("job", &lock, &["run"]);
    assert_code(&out, 2);
    let out = e.run("job", &lock, &run_args(&[], &["/no/such/command-xyz"]));
    assert_code(&out, 127);
    assert!(stderr(&out).contains("command-xyz"), "{}", stderr(&out));
    assert!(e.record(&lock).get("Owner").is_none(), "lock left held after a missing command");
    let out = e.run("job", &lock, &run_args(&["--ttl", "30s", "--heartbeat", "10s"], &["true"]));
    assert_code(&out, 2);
    assert!(stderr(&out).contains("half the lease"), "{}", stderr(&out));
}

on_every_store!(
    passes_exit_codes,
    gives_the_child_its_lock,
    heartbeats_keep_a_short_lease_alive,
    sigterm_reaches_the_child_and_frees_the_lock,
    a_paused_holder_loses_its_lease,
    a_killed_holder_is_taken_over_after_its_lease,
    bad_commands,
);
