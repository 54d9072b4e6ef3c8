//! SIGINT, SIGTERM and SIGHUP, caught once for the whole command: while we wait for a lock
//! they end the wait (the queue entry is removed first, docs/design.md, "Leases in practice (v2)");
//! while `run`'s command runs they are forwarded to it.

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The three signals a CI runner sends to a job it cancels or times out.
#[derive(Debug)]
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Catches the signals from now on (their default action, ending the process, is off).
    pub fn install() -> Result<Signals> {
        let sig = |kind| signal(kind).map_err(|e| Error::other("cannot install signal handlers", e));
        Ok(Signals {
            int: sig(SignalKind::interrupt())?,
            term: sig(SignalKind::terminate())?,
            hup: sig(SignalKind::hangup())?,
        })
    }

    /// The next signal's number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }

    /// Drives `work` to its end, passing the first signal that arrives meanwhile to `cancel`
    /// (the waiting loop watches it). `work` is never dropped half-way: a grant write in
    /// flight finishes, so we always know whether we hold the lock.
    pub async fn during<T>(&mut self, work: impl Future<Output = T>, cancel: &watch::Sender<Option<i32>>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                sig = self.recv() => {
                    if cancel.borrow().is_none() {
                        let _ = cancel.send(Some(sig));
                    }
                }
            }
        }
    }
}
