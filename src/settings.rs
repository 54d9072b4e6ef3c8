//! Validated settings: the raw command line ([`Cli`]) and the environment become, in one step
//! and before anything connects, values each command can trust (ripgrep's `LowArgs` ->
//! `HiArgs`). Every usage error is found here, so none of them costs a store request;
//! [`crate::app::run`] then only dispatches to one function per command.

use std::sync::Arc;
use std::time::Duration;

use crate::ci::{self, Env, Identity, Scope};
use crate::ciapi::CiApi;
use crate::cli::{self, AcquireArgs, Cli, Command, Given, Global, Output, ReleaseArgs, RenewArgs, RunArgs};
use crate::error::{Error, Result};
use crate::locker::{AcquireOptions, Holding, RETENTION, ReleaseOptions, Ttl, WaitReport};
use crate::queue::QueueMode;
use crate::run::RunSpec;
use crate::store::StoreUrl;
use crate::store::aws::AwsOptions;

/// Everything one command line asks for, checked.
pub struct Settings {
    /// The store (`--store`, `--table`, `--bucket`/`--prefix`).
    pub store: StoreUrl,
    /// AWS overrides for the store's client (`--region`, `--endpoint-url`, path style).
    pub aws: AwsOptions,
    /// `--clock-margin`.
    pub clock_margin: Duration,
    /// Whose lock: `--scope`, else the job for `run` and the pipeline for the others.
    pub scope: Scope,
    /// How results are printed.
    pub output: Output,
    /// `--notify`: where events go, if anywhere.
    pub notify: Option<Arc<crate::notify::Notifier>>,
    /// What this job's CI shows natively (step summary, annotations, log sections).
    pub ci: Arc<crate::ci_report::CiReport>,
    /// The command, with its own options checked.
    pub command: Task,
}

/// A command with its checked options.
pub enum Task {
    /// `acquire`.
    Acquire(Acquire),
    /// `release`.
    Release(Release),
    /// `renew`.
    Renew(Renew),
    /// `status`.
    Status(Status),
    /// `list`.
    List(List),
    /// `doctor`.
    Doctor,
    /// `run -- CMD`.
    Run(Run),
    /// `state get|put|delete KEY`.
    State(StateTask),
    /// `serve`.
    Serve(crate::serve::Config),
}

/// `acquire`: who takes which lock, and how.
pub struct Acquire {
    /// The lock names, valid for the store: one, or several taken all or none (sorted).
    pub locks: Vec<String>,
    /// Who we are.
    pub me: Identity,
    /// How to wait and take over, with progress lines and the CI server to ask.
    pub opts: AcquireOptions,
}

/// `release`: which grant to give back.
pub struct Release {
    /// The lock names, valid for the store: one, or several taken all or none (sorted).
    pub locks: Vec<String>,
    /// This pipeline, and the grant's token if we have it.
    pub who: Holding,
    /// Break-glass and retention.
    pub opts: ReleaseOptions,
    /// `--strict`: someone else's lock is an error (exit 72), not a warning.
    pub strict: bool,
}

/// `renew`: which grant, for how long.
pub struct Renew {
    /// The lock names, valid for the store: one, or several taken all or none (sorted).
    pub locks: Vec<String>,
    /// This pipeline, and the grant's token if we have it.
    pub who: Holding,
    /// The new lease.
    pub ttl: Ttl,
}

/// `status`: which lock, and the queue order to show.
pub struct Status {
    /// The lock names, valid for the store: one, or several taken all or none (sorted).
    pub locks: Vec<String>,
    /// The order to show the queue in.
    pub queue: QueueMode,
    /// `--slots`: the N the lock must have.
    pub slots: Option<u32>,
}

/// `list`: which locks, and which page.
#[derive(Debug, Clone, Default)]
pub struct List {
    /// `--name-prefix` (empty: every lock).
    pub prefix: String,
    /// `--held` / `--free`: `Some(true)` for held only, `Some(false)` for free only.
    pub held: Option<bool>,
    /// `--waiting`: only locks with a queue.
    pub waiting: bool,
    /// `--older-than`: only locks held for longer than this.
    pub older_than: Option<Duration>,
    /// `--limit`: at most this many.
    pub limit: Option<usize>,
    /// `--after`: the continuation token to start after.
    pub after: Option<String>,
}

/// `run -- CMD`: a job-scoped grant around one command.
pub struct Run {
    /// The lock names, valid for the store: one, or several taken all or none (sorted).
    pub locks: Vec<String>,
    /// Who we are (`Holder.Via = "run"`).
    pub me: Identity,
    /// How to wait; no re-entry, and our own pipeline's owners to refuse at once.
    pub opts: AcquireOptions,
    /// The command, its heartbeat and kill grace, checked against the lease.
    pub spec: RunSpec,
}

impl List {
    /// Does the lock `o` pass the filters (the name prefix is the store's to apply)?
    pub fn admits(&self, o: &crate::store::Observed, now: i64) -> bool {
        use crate::store::State;
        let record = o.record();
        let held = match &o.state {
            State::Valid(r) => !r.is_free(),
            // Never free (docs/design.md, rule 8).
            State::Corrupt(_) => true,
            State::Absent => false,
        };
        if self.held.is_some_and(|want| want != held) {
            return false;
        }
        if self.waiting && record.is_none_or(|r| r.waiters.is_empty()) {
            return false;
        }
        if let Some(d) = self.older_than {
            let since = record.filter(|r| !r.is_free()).and_then(|r| match r.owner {
                Some(_) => r.acquired_at,
                None => r.shared.values().map(|h| h.acquired_at).min(),
            });
            if since.is_none_or(|t| now - t <= d.as_millis() as i64) {
                return false;
            }
        }
        true
    }

    /// Are there filters beyond the name prefix?
    pub fn filtered(&self) -> bool {
        self.held.is_some() || self.waiting || self.older_than.is_some()
    }
}

fn list(args: cli::ListArgs) -> Result<List> {
    if args.limit == Some(0) {
        return Err(Error::Usage("--limit must be at least 1".into()));
    }
    let older_than = args.older_than.as_deref().map(|d| cli::parse_duration("--older-than", d)).transpose()?;
    Ok(List {
        prefix: args.name_prefix.unwrap_or_default(),
        held: match (args.held, args.free) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        waiting: args.waiting,
        older_than,
        limit: args.limit,
        after: args.after.filter(|a| !a.is_empty()),
    })
}

impl Settings {
    /// Who the command acts as, for events (none for the commands that hold nothing).
    pub fn owner(&self) -> Option<&str> {
        match &self.command {
            Task::Acquire(a) => Some(&a.me.owner),
            Task::Run(r) => Some(&r.me.owner),
            Task::Release(r) => Some(&r.who.owner),
            Task::Renew(r) => Some(&r.who.owner),
            _ => None,
        }
    }

    /// Checks `cli` against the environment `env`. Errors are usage errors (exit 2), found
    /// in the order the flags are read: store, margin, lock name, owner, the command's own.
    pub fn build(cli: Cli, env: Env<'_>) -> Result<Settings> {
        let Cli { global, command, given } = cli;
        let store = global.store_url(&given)?;
        let clock_margin = global.clock_margin()?;
        // `run` guards one job's command; the other commands act for the whole pipeline.
        let default_scope = if matches!(command, Command::Run(_)) {
            Scope::Job
        } else {
            Scope::Pipeline
        };
        let scope = global.scope.unwrap_or(default_scope);
        let after = match global.notify_after.as_deref() {
            Some(d) => cli::positive("--notify-after", d)?,
            None => crate::notify::DEFAULT_AFTER,
        };
        let notify = crate::notify::Notifier::new(&global.notify, after)?;
        let low = Low {
            g: &global,
            given: &given,
            env,
            store: &store,
            margin: clock_margin,
            scope,
            old_owner_rule: old_owner_rule(env),
        };
        let task = match command {
            Command::Acquire(args) => Task::Acquire(low.acquire(&args)?),
            Command::Release(args) => Task::Release(low.release(&args)?),
            Command::Renew(args) => Task::Renew(low.renew(&args)?),
            Command::Status(args) => Task::Status(Status {
                locks: low.locks()?,
                queue: args.queue,
                slots: args.slots.map(crate::cli::check_slots).transpose()?,
            }),
            Command::List(args) => Task::List(list(args)?),
            Command::Doctor => Task::Doctor,
            Command::Run(args) => Task::Run(low.run(args)?),
            Command::State(args) => Task::State(low.state(args)?),
            Command::Serve(args) => Task::Serve(crate::serve::Config::build(&args, clock_margin)?),
        };
        Ok(Settings {
            store,
            aws: global.aws(),
            clock_margin,
            scope,
            output: global.output,
            notify,
            ci: crate::ci_report::CiReport::from_env(env),
            command: task,
        })
    }
}

/// The safety checker's negative control for the identity rules: `run` takes its owner from
/// an inherited PIPELINE_LOCK_OWNER and re-enters a grant of that owner, as before v2. Only in
/// test builds (feature `negative-control`).
fn old_owner_rule(env: Env<'_>) -> bool {
    cfg!(feature = "negative-control") && env("PIPELINE_LOCK_TEST_BREAK").as_deref() == Some("old-owner-rule")
}

/// What every command's checks share: the raw flags and the environment.
struct Low<'a> {
    g: &'a Global,
    given: &'a Given,
    env: Env<'a>,
    store: &'a StoreUrl,
    margin: Duration,
    scope: Scope,
    old_owner_rule: bool,
}

impl Low<'_> {
    /// The lock names: `--lock` (repeatable), else the list a multi-lock acquire exported
    /// (`PIPELINE_LOCK_NAMES`), else `PIPELINE_LOCK_NAME`, else the CI project path; each
    /// valid and one the store can hold, sorted, none twice.
    fn locks(&self) -> Result<Vec<String>> {
        let exported = (self.env)("PIPELINE_LOCK_NAMES").filter(|v| !v.is_empty());
        let names = match (&exported, self.g.lock.as_slice()) {
            (Some(list), _) if !self.given.has("lock") => serde_json::from_str::<Vec<String>>(list).map_err(|e| {
                Error::Usage(format!(
                    "PIPELINE_LOCK_NAMES is not a JSON list of lock names ({e}): {list:?}; pass --lock NAME for each lock instead"
                ))
            })?,
            (_, []) => match ci::default_lock(self.env) {
                Some(l) => vec![l],
                None => {
                    return Err(Error::Usage(
                        "no lock name: pass --lock NAME (in CI it defaults to the project path)".into(),
                    ));
                }
            },
            (_, given) => given.to_vec(),
        };
        let mut checked = Vec::with_capacity(names.len());
        for name in &names {
            let name = cli::validate_lock(name)?;
            self.store.check_lock_name(&name)?;
            checked.push(name);
        }
        crate::locker::sorted_locks(&checked)
    }

    /// `PIPELINE_LOCK_OWNER` came from the environment, not from `--owner`.
    fn inherited_owner(&self) -> bool {
        self.g.owner.is_some() && !self.given.has("owner")
    }

    /// The owner to use instead of CI's. In CI a job-scoped command (`run`) takes it from
    /// `--owner` only: PIPELINE_LOCK_OWNER in its environment is what an earlier job exported
    /// for the pipeline (dotenv, $GITHUB_ENV), and would turn the job's identity into the
    /// pipeline's (docs/design.md, "Owner identity and scopes").
    fn owner_flag(&self) -> Option<&str> {
        let env = self.env;
        let in_ci = env("GITLAB_CI").is_some_and(|v| !v.is_empty()) || env("GITHUB_ACTIONS").is_some_and(|v| !v.is_empty());
        match self.g.owner.as_deref() {
            Some(_) if self.scope == Scope::Job && in_ci && self.inherited_owner() && !self.old_owner_rule => None,
            o => o,
        }
    }

    /// Who we are: CI's identity, or the owner flag outside CI.
    fn identity(&self) -> Result<Identity> {
        let owner = self
            .owner_flag()
            .map(|o| cli::validate_text("owner (--owner, PIPELINE_LOCK_OWNER)", o))
            .transpose()?;
        ci::detect(self.env, self.scope, owner.as_deref())?
            .ok_or_else(|| Error::Usage("no owner: outside GitLab CI and GitHub Actions pass --owner NAME (or set PIPELINE_LOCK_OWNER)".into()))
    }

    /// The acquire options of `args`, with progress lines and the CI server to ask.
    fn acquire_options(&self, args: &AcquireArgs, me: &Identity, default_ttl: Duration) -> Result<AcquireOptions> {
        let mut opts = with_progress(args.options(self.margin, self.given, default_ttl)?, self.g.verbose);
        opts.ci_api = CiApi::from_env(self.env, me, args.ci_api_wanted())?;
        Ok(opts)
    }

    fn acquire(&self, args: &AcquireArgs) -> Result<Acquire> {
        let (locks, me) = (self.locks()?, self.identity()?);
        let opts = self.acquire_options(args, &me, cli::ACQUIRE_TTL)?;
        Ok(Acquire { locks, me, opts })
    }

    fn release(&self, args: &ReleaseArgs) -> Result<Release> {
        let (locks, me) = (self.locks()?, self.identity()?);
        let reason = args.reason.as_deref().map(|r| cli::validate_text("reason (--reason)", r)).transpose()?;
        let opts = ReleaseOptions {
            force: args.force.then(|| reason.unwrap_or_default()),
            retention: RETENTION,
        };
        let who = Holding::pipeline(&me.owner, args.token.clone());
        Ok(Release {
            locks,
            who,
            opts,
            strict: args.strict,
        })
    }

    fn renew(&self, args: &RenewArgs) -> Result<Renew> {
        let (locks, me) = (self.locks()?, self.identity()?);
        let ttl = match cli::lease(args.ttl.as_deref(), args.disable_ttl, self.given, None)? {
            Some(d) => Ttl::For(d),
            None if args.ttl.is_some() || args.disable_ttl => Ttl::NoEnd,
            None => Ttl::Keep,
        };
        let who = Holding::pipeline(&me.owner, args.token.clone());
        Ok(Renew { locks, who, ttl })
    }

    fn run(&self, args: RunArgs) -> Result<Run> {
        let (locks, mut me) = (self.locks()?, self.identity()?);
        me.holder.via = Some("run".into());
        let mut opts = self.acquire_options(&args.acquire, &me, cli::RUN_TTL)?;
        opts.reenter = self.old_owner_rule;
        // This job's own pipeline, as an earlier job's `acquire` would hold the lock.
        opts.own_pipeline = ci::detect(self.env, Scope::Pipeline, None)?.map(|p| p.owner).into_iter().collect();
        opts.own_pipeline.extend(self.g.owner.clone().filter(|_| self.inherited_owner()));
        if self.old_owner_rule {
            opts.own_pipeline.clear();
        }
        let spec = RunSpec {
            argv: args.command,
            heartbeat: args.heartbeat.as_deref().map(|h| cli::parse_duration("--heartbeat", h)).transpose()?,
            kill_grace: cli::parse_duration("--kill-grace", &args.kill_grace)?,
            max_duration: args.max_duration.as_deref().map(|d| cli::positive("--max-duration", d)).transpose()?,
            notify: None,
            ci: None,
        };
        crate::lease::check_heartbeat(opts.ttl, spec.heartbeat, opts.clock_margin, spec.kill_grace)?;
        Ok(Run { locks, me, opts, spec })
    }
}

/// Progress lines on stderr while waiting: every few polls, or every poll with `-v`.
fn with_progress(mut opts: AcquireOptions, verbose: u8) -> AcquireOptions {
    opts.progress = Some(Arc::new(|r: &WaitReport| eprintln!("pipeline-lock: {}", crate::output::progress_line(r))));
    if verbose > 0 {
        opts.progress_every = Duration::ZERO;
    }
    opts
}

mod state;
pub use state::StateTask;

#[cfg(test)]
mod tests;
