//! pipeline-lock: a lock that CI pipelines take in one job and give back in a later one,
//! with DynamoDB, S3 or a local directory as the shared store.
//!
//! ```no_run
//! # async fn demo() -> pipeline_lock::Result<()> {
//! use pipeline_lock::{Locker, AcquireOptions, Holding, ReleaseOptions, ci, store};
//! let store = store::open(&store::StoreUrl::parse("file:///tmp/locks")?, &Default::default()).await?;
//! let locker = Locker::new(store);
//! let me = ci::detect(&|k| std::env::var(k).ok(), ci::Scope::Pipeline, Some("me"))?.unwrap();
//! let grant = locker.acquire("deploy-prod", &me, &AcquireOptions::default()).await?;
//! println!("fence {}", grant.fence);
//! locker.release("deploy-prod", &Holding::grant(&grant), &ReleaseOptions::default()).await?;
//! # Ok(()) }
//! ```

pub mod acquire;
pub mod app;
pub mod backoff;
pub mod ci;
pub mod ci_report;
pub mod ciapi;
pub mod cli;
pub mod clock;
pub mod error;
pub mod exit;
pub mod lease;
pub mod locker;
pub mod notify;
pub mod output;
pub mod policy;
pub mod queue;
pub mod record;
pub mod report;
pub mod run;
pub mod serve;
pub mod settings;
pub mod signals;
pub mod state;
pub mod store;

pub use error::{Error, Occupant, Result};
pub use lease::{Lease, LeaseState};
pub use locker::{AcquireOptions, Grant, Holding, Locker, ReleaseOptions, Released, RenewOptions, Ttl, Wait};
