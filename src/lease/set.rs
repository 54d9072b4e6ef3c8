//! The leases of a multi-lock `run` (`--lock A --lock B`): held while every one is held, lost
//! as soon as any one is lost.

use std::future::Future;

use tokio::time::Instant;

use super::Lease;
use crate::error::{Error, Result};
use crate::locker::Grant;

/// Leases taken together, all or none; each renews itself.
#[derive(Debug)]
pub struct Leases(Vec<Lease>);

impl Leases {
    /// The leases, in sorted lock order.
    pub fn new(leases: Vec<Lease>) -> Leases {
        Leases(leases)
    }

    /// The grants, in sorted lock order.
    pub fn grants(&self) -> Vec<&Grant> {
        self.0.iter().map(Lease::grant).collect()
    }

    /// Is every lease still ours, as far as we know?
    pub fn is_held(&self) -> bool {
        self.0.iter().all(Lease::is_held)
    }

    /// Resolves when any lease is lost, with its error (exit 76). Borrows nothing.
    pub fn lost(&self) -> impl Future<Output = Error> + Send + 'static {
        let mut watching = tokio::task::JoinSet::new();
        for lease in &self.0 {
            watching.spawn(lease.lost());
        }
        async move {
            match watching.join_next().await {
                Some(Ok(err)) => err,
                Some(Err(join)) => Error::other("the lease watcher failed", join),
                // No leases at all: nothing can be lost.
                None => std::future::pending().await,
            }
        }
    }

    /// When a command run under the locks must be dead: the soonest of the leases' times.
    pub fn kill_by(&self) -> Option<Instant> {
        self.0.iter().filter_map(Lease::kill_by).min()
    }

    /// Releases every lease (each after stopping its heartbeat); the first failure is the
    /// result, after all were tried.
    pub async fn release(&mut self) -> Result<()> {
        let mut first = None;
        for lease in &mut self.0 {
            if let Err(e) = lease.release().await {
                tracing::warn!("releasing lock {:?} failed: {}", lease.grant().lock, crate::report::chain(&e));
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
