//! The options of acquiring (`acquire`, and `run`'s acquisition), checked into
//! [`crate::AcquireOptions`] in one step.

use std::time::Duration;

use clap::Args;
use clap::builder::{BoolishValueParser, FalseyValueParser};

use super::{Given, check_slots, lease, parse_duration, positive, validate_text};
use crate::error::{Error, Result};
use crate::queue::QueueMode;

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How to acquire.
    #[command(flatten)]
    pub acquire: AcquireArgs,
    /// Renew the lease this often [default: a third of the lease; at most half]
    #[arg(long, env = "PIPELINE_LOCK_HEARTBEAT", allow_hyphen_values = true)]
    pub heartbeat: Option<String>,
    /// When the lease is lost: time between TERM and KILL for the command.
    #[arg(long, env = "PIPELINE_LOCK_KILL_GRACE", default_value = "10s", allow_hyphen_values = true)]
    pub kill_grace: String,
    /// Stop the command (TERM, --kill-grace, KILL) after this long even if the lock is
    /// healthy, release the lock and exit 80 [default: no limit]
    #[arg(long, env = "PIPELINE_LOCK_MAX_DURATION", value_name = "D", allow_hyphen_values = true)]
    pub max_duration: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Options of acquiring.
#[derive(Debug, Args, Clone)]
pub struct AcquireArgs {
    /// Take over a lock whose holder has not renewed it for longer than this (e.g. 3600, 1h).
    #[arg(long, env = "PIPELINE_LOCK_FORCE_AFTER", allow_hyphen_values = true)]
    pub force_after: Option<String>,
    /// Lease length; renew before it ends [default: 1h; run: 2m]
    #[arg(long, env = "PIPELINE_LOCK_TTL", allow_hyphen_values = true)]
    pub ttl: Option<String>,
    /// No lease: only --force-after or --force can take the lock from a dead holder.
    #[arg(long, env = "PIPELINE_LOCK_DISABLE_TTL", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub disable_ttl: bool,
    /// Give up waiting after this long (exit 75) [default: wait forever]
    #[arg(long, alias = "timeout", env = "PIPELINE_LOCK_WAIT", allow_hyphen_values = true)]
    pub wait: Option<String>,
    /// Do not wait: exit 73 if the lock is held.
    #[arg(long, env = "PIPELINE_LOCK_NO_WAIT", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub no_wait: bool,
    /// Time between polls, jittered.
    #[arg(long, env = "PIPELINE_LOCK_RETRY_INTERVAL", default_value = "2s", allow_hyphen_values = true)]
    pub retry_interval: String,
    /// Exponential backoff: each pause between polls is the last one times COEF (e.g. 2),
    /// from --retry-interval up to --backoff-cap [default: even pauses]
    #[arg(long, env = "PIPELINE_LOCK_BACKOFF", value_name = "COEF")]
    pub backoff: Option<f64>,
    /// The longest pause of --backoff.
    #[arg(
        long,
        env = "PIPELINE_LOCK_BACKOFF_CAP",
        value_name = "D",
        default_value = "30s",
        allow_hyphen_values = true
    )]
    pub backoff_cap: String,
    /// Give up after this many polls (exit 75).
    #[arg(long, env = "PIPELINE_LOCK_MAX_RETRIES")]
    pub max_retries: Option<u32>,
    /// Why: stored with the grant and in History.
    #[arg(long, env = "PIPELINE_LOCK_REASON")]
    pub reason: Option<String>,
    /// Break glass: take the lock from whoever holds it (needs --reason).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Who gets a free lock: the oldest waiter, the newest pipeline, or whoever writes first.
    #[arg(long, env = "PIPELINE_LOCK_QUEUE", value_enum, default_value_t)]
    pub queue: QueueMode,
    /// Exit 74 when a newer pipeline of this project waits for or holds the lock.
    #[arg(long, env = "PIPELINE_LOCK_SUPERSEDE", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub supersede: bool,
    /// Ask our CI server whether the holder's pipeline has ended, and take over if so
    /// [default: on in CI when CI_JOB_TOKEN, PIPELINE_LOCK_GITLAB_TOKEN or GITHUB_TOKEN is set]
    #[arg(long, env = "PIPELINE_LOCK_CI_API", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ci_api: Option<bool>,
    /// Never ask the CI server (see --ci-api).
    #[arg(long)]
    pub no_ci_api: bool,
    /// This pipeline's number for --queue newest and --supersede [default: CI_PIPELINE_IID, GITHUB_RUN_NUMBER]
    #[arg(long, env = "PIPELINE_LOCK_ORDINAL")]
    pub ordinal: Option<u64>,
    /// The floor of the queue's prune window (tests only).
    #[arg(long, env = "PIPELINE_LOCK_PRUNE_FLOOR", default_value = "30s", hide = true, allow_hyphen_values = true)]
    pub prune_floor: String,
    /// How many may hold the lock at once (a pool, 1 to 64); fixed when its record is created.
    #[arg(long, env = "PIPELINE_LOCK_SLOTS", default_value_t = 1)]
    pub slots: u32,
    /// A shared hold, beside other shared holders up to --slots (each in its own slot);
    /// without it the hold is exclusive and waits until nobody holds the lock.
    #[arg(long, env = "PIPELINE_LOCK_SHARED", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub shared: bool,
}

impl AcquireArgs {
    /// Validated acquire options (without progress, which the app adds), with `default_ttl`
    /// where neither `--ttl` nor `--disable-ttl` is given.
    pub fn options(&self, margin: Duration, given: &Given, default_ttl: Duration) -> Result<crate::AcquireOptions> {
        let wait = match given.one_of(&[
            ("wait", "PIPELINE_LOCK_WAIT", self.wait.is_some()),
            ("no_wait", "PIPELINE_LOCK_NO_WAIT", self.no_wait),
        ])? {
            Some("no_wait") => crate::Wait::No,
            Some(_) => crate::Wait::For(parse_duration("--wait", self.wait.as_deref().unwrap_or_default())?),
            None => crate::Wait::Forever,
        };
        let force = match (self.force, &self.reason) {
            (true, Some(r)) => Some(r.clone()),
            (true, None) => return Err(Error::Usage("--force needs --reason TEXT".into())),
            _ => None,
        };
        let retry_interval = positive("--retry-interval", &self.retry_interval)?;
        let backoff = match self.backoff {
            Some(coef) => Some(crate::backoff::Backoff::new(
                coef,
                positive("--backoff-cap", &self.backoff_cap)?,
                retry_interval,
            )?),
            None => None,
        };
        Ok(crate::AcquireOptions {
            backoff,
            ttl: lease(self.ttl.as_deref(), self.disable_ttl, given, Some(default_ttl))?,
            force_after: self.force_after.as_deref().map(|v| positive("--force-after", v)).transpose()?,
            wait,
            retry_interval,
            max_retries: self.max_retries,
            force,
            reason: self.reason.as_deref().map(|r| validate_text("reason (--reason)", r)).transpose()?,
            clock_margin: margin,
            queue: self.queue,
            supersede: self.supersede,
            ordinal: self.ordinal,
            prune_floor: positive("--prune-floor", &self.prune_floor)?,
            slots: check_slots(self.slots)?,
            shared: self.shared,
            ..crate::AcquireOptions::default()
        })
    }

    /// `--ci-api` / `--no-ci-api`: `None` leaves it to the environment.
    pub fn ci_api_wanted(&self) -> Option<bool> {
        if self.no_ci_api { Some(false) } else { self.ci_api }
    }
}
