//! `run --max-duration D` with real processes on every store: the command is stopped after D
//! even though the lock is healthy (TERM, then KILL after --kill-grace for a command that
//! ignores TERM), `run` exits 80 and the lock is free again.

mod support;

use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr};

fn a_command_past_its_max_duration_is_stopped_and_the_lock_released(b: Backend) {
    let Some(e) = Env::try_new(b, "max-duration") else { return };
    let lock = e.lock("l");
    let start = Instant::now();
    // `exec sleep` so TERM reaches the sleep itself, which dies of it at once.
    let out = e.run("job", &lock, &["run", "--max-duration", "1s", "--", "sh", "-c", "exec sleep 30"]);
    let took = start.elapsed();
    assert_code(&out, 80);
    assert!(stderr(&out).contains("--max-duration 1s"), "{}", stderr(&out));
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "{took:?}");
    assert!(e.record(&lock).get("Owner").is_none(), "the lock is released");
}

fn a_command_that_ignores_term_is_killed_after_the_grace(b: Backend) {
    let Some(e) = Env::try_new(b, "max-duration-kill") else { return };
    let lock = e.lock("l");
    let start = Instant::now();
    let args = [
        "run",
        "--max-duration",
        "1s",
        "--kill-grace",
        "1s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 30; sleep 30",
    ];
    let out = e.run("job", &lock, &args);
    let took = start.elapsed();
    assert_code(&out, 80);
    // 1 s to TERM, 1 s of grace, then KILL: not before 2 s, and far before the 60 s it would run.
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "{took:?}");
    assert!(e.record(&lock).get("Owner").is_none(), "the lock is released");
    // The next holder gets it at once.
    assert_code(&e.run("next", &lock, &["acquire", "--no-wait"]), 0);
}

fn a_command_within_its_max_duration_keeps_its_own_exit_code(b: Backend) {
    let Some(e) = Env::try_new(b, "max-duration-ok") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("job", &lock, &["run", "--max-duration", "30s", "--", "sh", "-c", "exit 3"]), 3);
    assert_code(&e.run("job", &lock, &["run", "--max-duration", "0s", "--", "true"]), 2);
}

on_every_store!(
    a_command_past_its_max_duration_is_stopped_and_the_lock_released,
    a_command_that_ignores_term_is_killed_after_the_grace,
    a_command_within_its_max_duration_keeps_its_own_exit_code,
);
