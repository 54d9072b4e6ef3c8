//! `pipeline-lock run -- CMD`: hold a lock around one command. The command runs in its own
//! process group with the lock in its environment; signals to us are forwarded to that
//! group; its exit code is ours. If the lease is lost, the command is stopped (TERM, grace,
//! KILL) and we exit 76 without touching the record, which is someone else's now.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::watch;

use crate::ci::Identity;
use crate::error::{Error, Result};
use crate::locker::{AcquireOptions, Locker};
use crate::signals::Signals;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Renewal interval (default: a third of the lease).
    pub heartbeat: Option<Duration>,
    /// Between TERM and KILL when the lease is lost (or `max_duration` is reached).
    pub kill_grace: Duration,
    /// `--max-duration`: the command is stopped after this long even if the lock is healthy
    /// (seed S0's MAX_LOCK_DURATION_SEC), and `run` exits [`crate::exit::MAX_DURATION`].
    pub max_duration: Option<Duration>,
    /// `--notify`: takeovers and long waits are announced there (a lost lease by the caller).
    pub notify: Option<std::sync::Arc<crate::notify::Notifier>>,
    /// The CI's own reports: the wait in a GitLab section, the grant in GitHub's summary.
    pub ci: Option<std::sync::Arc<crate::ci_report::CiReport>>,
}

/// The shell's convention: 128 + signal number for a command killed by a signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).min(255) as u8,
        _ => crate::exit::UNEXPECTED,
    }
}

fn send(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Acquires (every lock of `locks`, all or none), runs the command, releases, and returns
/// the command's exit code.
pub async fn run(locker: &Locker, locks: &[String], who: &Identity, opts: &AcquireOptions, spec: &RunSpec) -> Result<u8> {
    let mut signals = Signals::install()?;
    let (cancel, cancelled) = watch::channel(None);
    let ci = spec.ci.clone().unwrap_or_default();
    let lock = locks.join(", ");
    let (opts, seen) = crate::notify::watch_progress(ci.around_progress(
        AcquireOptions {
            cancel: Some(cancelled.clone()),
            ..opts.clone()
        },
        &lock,
    ));
    let wait = signals.during(locker.leases(locks, who, &opts, spec.heartbeat, spec.kill_grace), &cancel);
    let base = crate::notify::base(&lock, &locker.store().url(), &who.owner);
    let waited = crate::notify::while_waiting(spec.notify.as_ref(), base, &seen, wait).await;
    ci.end_wait();
    let mut lease = waited?;
    if let Some(sig) = *cancelled.borrow() {
        // Granted just as we were told to stop: give it straight back, run nothing.
        lease.release().await?;
        return Err(Error::Interrupted {
            signal: sig,
            message: format!("got the lock {lock:?} but signal {sig} arrived meanwhile; released it, ran nothing"),
        });
    }
    for grant in lease.grants() {
        crate::notify::on_grant(spec.notify.as_ref(), grant, opts.force.is_some());
        ci.granted(grant, crate::notify::queued(&seen), opts.force.is_some());
    }
    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    match lease.grants().as_slice() {
        [grant] => {
            cmd.env("PIPELINE_LOCK_NAME", &grant.lock)
                .env("PIPELINE_LOCK_OWNER", &grant.owner)
                .env("PIPELINE_LOCK_TOKEN", &grant.token)
                .env("PIPELINE_LOCK_FENCE", grant.fence.to_string())
                .env("PIPELINE_LOCK_SLOT", grant.slot.to_string())
                // An inherited list of an earlier multi-lock grant would name other locks.
                .env_remove("PIPELINE_LOCK_NAMES")
                .env_remove("PIPELINE_LOCK_FENCES");
        }
        grants => {
            let grants: Vec<_> = grants.iter().map(|g| (*g).clone()).collect();
            let (names, fences) = crate::output::names_and_fences(&grants)?;
            cmd.env("PIPELINE_LOCK_NAMES", names)
                .env("PIPELINE_LOCK_OWNER", grants.first().map(|g| g.owner.as_str()).unwrap_or_default())
                .env("PIPELINE_LOCK_FENCES", fences);
            for single in ["PIPELINE_LOCK_NAME", "PIPELINE_LOCK_TOKEN", "PIPELINE_LOCK_FENCE", "PIPELINE_LOCK_SLOT"] {
                cmd.env_remove(single);
            }
        }
    }
    cmd.process_group(0).kill_on_drop(false);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to the
    // command if we die (SIGKILL included), so an orphan does not go on without the lock.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            eprintln!("pipeline-lock: cannot run {:?}: {e}; releasing lock {lock:?}", spec.argv[0]);
            lease.release().await?;
            return Ok(code);
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let lost = lease.lost();
    tokio::pin!(lost);
    // Counted from the command's start on the monotonic clock: it bounds the protected work,
    // not the wait for the lock.
    let too_long = async {
        match spec.max_duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(too_long);
    let mut interrupts = 0;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Error::other("cannot wait for the command", e))?;
                let code = exit_code(status);
                if !lease.is_held() {
                    // The lease was lost (or fell in doubt) as the command ended, the two
                    // arriving together: the command may have run its end without the lock,
                    // so the job goes red (exit 76) as when the loss comes first.
                    let err = lease.lost().await;
                    eprintln!("pipeline-lock: {err}; the command had ended (exit {code}), but the lock was not surely ours until then");
                    let _ = lease.release().await;
                    return Err(err);
                }
                if let Err(e) = lease.release().await {
                    eprintln!("pipeline-lock: warning: the command ended (exit {code}) but releasing lock {lock:?} failed: {}; \
                               it frees itself when its lease ends", crate::report::chain(&e));
                }
                return Ok(code);
            }
            sig = signals.recv() => {
                if sig == libc::SIGINT {
                    interrupts += 1;
                }
                // A second Ctrl-C means "now": KILL, then release as usual.
                send(pgid, if interrupts > 1 { libc::SIGKILL } else { sig });
            }
            err = &mut lost => {
                // Dead by the lease end minus the margin (docs/design.md, "Leases in practice (v2)"):
                // the grace is cut short when that comes sooner, and is none when the lock
                // is already someone else's.
                stop(&mut child, pgid, kill_at(lease.kill_by(), spec.kill_grace), &err.to_string()).await;
                return Err(err);
            }
            () = &mut too_long => {
                let limit = humantime::format_duration(spec.max_duration.unwrap_or_default());
                let why = format!("the command ran for --max-duration {limit}");
                stop(&mut child, pgid, kill_at(lease.kill_by(), spec.kill_grace), &why).await;
                // The lock is still ours and healthy: give it back as after any other end.
                if let Err(e) = lease.release().await {
                    eprintln!("pipeline-lock: warning: releasing lock {lock:?} after stopping the command failed: {}; \
                               it frees itself when its lease ends", crate::report::chain(&e));
                }
                return Err(Error::MaxDuration(format!(
                    "{why} on lock {lock:?} and was stopped; released the lock (exit {})",
                    crate::exit::MAX_DURATION
                )));
            }
        }
    }
}

/// When KILL follows TERM: after `grace`, or sooner when the lease end minus the margin
/// (`kill_by`, the earliest of the leases held) comes first, so the command is dead before anyone may take over.
fn kill_at(kill_by: Option<tokio::time::Instant>, grace: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    kill_by.map_or(now + grace, |k| k.min(now + grace)).max(now)
}

/// Stops the command's process group: TERM, then KILL at `kill_at` if it is still there.
/// The one stop path of `run`, for a lost lease and for `--max-duration` alike.
async fn stop(child: &mut tokio::process::Child, pgid: i32, kill_at: tokio::time::Instant, why: &str) {
    let now = tokio::time::Instant::now();
    eprintln!(
        "pipeline-lock: {why}; stopping the command (TERM, then KILL after {})",
        humantime::format_duration(Duration::from_millis((kill_at - now).as_millis() as u64))
    );
    send(pgid, libc::SIGTERM);
    if tokio::time::timeout_at(kill_at, child.wait()).await.is_err() {
        send(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
