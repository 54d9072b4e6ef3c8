//! The commands as the binary runs them: settings in, a printed result and an exit code out.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::ci::{self, Identity, Scope};
use crate::ciapi::CiApi;
use crate::cli::{self, Cli, Command, Output};
use crate::error::{Error, Result};
use crate::exit;
use crate::locker::{Grant, Holding, How, Locker, ReleaseOptions, Released, Ttl, WaitReport};
use crate::queue::{self, QueueMode};
use crate::record::Record;
use crate::signals::Signals;
use crate::store::{self, Observed, Outcome, State};

/// The environment, read once; tests pass their own.
pub type EnvFn = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Runs one parsed command line. Returns the exit code for success paths that are not 0.
pub async fn run(cli: Cli, env: EnvFn) -> Result<u8> {
    let g = &cli.global;
    let url = g.store_url(&cli.given)?;
    let margin = g.clock_margin()?;
    let is_run = matches!(cli.command, Command::Run(_));
    // `run` guards one job's command; the other commands act for the whole pipeline.
    let scope = g.scope.unwrap_or(if is_run { Scope::Job } else { Scope::Pipeline });
    let old_owner_rule = old_owner_rule(&env);
    let lock = || -> Result<String> {
        let name = match g.lock.clone().or_else(|| ci::default_lock(&env)) {
            Some(l) => cli::validate_lock(&l)?,
            None => {
                return Err(Error::Usage(
                    "no lock name: pass --lock NAME (in CI it defaults to the project path)".into(),
                ));
            }
        };
        url.check_lock_name(&name)?;
        Ok(name)
    };
    // In CI a job-scoped `run` takes its owner from `--owner` only: PIPELINE_LOCK_OWNER in its
    // environment is what an earlier job exported for the pipeline (dotenv, $GITHUB_ENV),
    // and would turn the job's identity into the pipeline's (docs/design.md, "Owner identity and scopes").
    let in_ci = env("GITLAB_CI").is_some_and(|v| !v.is_empty()) || env("GITHUB_ACTIONS").is_some_and(|v| !v.is_empty());
    let inherited_owner = g.owner.is_some() && !cli.given.has("owner");
    let owner_flag = match g.owner.as_deref() {
        Some(_) if scope == Scope::Job && in_ci && inherited_owner && !old_owner_rule => None,
        o => o,
    };
    let identity = || -> Result<Identity> {
        let owner = owner_flag
            .map(|o| cli::validate_text("owner (--owner, PIPELINE_LOCK_OWNER)", o))
            .transpose()?;
        ci::detect(&env, scope, owner.as_deref())?
            .ok_or_else(|| Error::Usage("no owner: outside GitLab CI and GitHub Actions pass --owner NAME (or set PIPELINE_LOCK_OWNER)".into()))
    };
    // Validate everything the command needs before connecting to anything.
    let retention = crate::locker::RETENTION;
    let output = g.output;
    match &cli.command {
        Command::Run(args) => {
            let (lock, mut me) = (lock()?, identity()?);
            me.holder.via = Some("run".into());
            let mut opts = with_progress(args.acquire.options(margin, &cli.given, cli::RUN_TTL)?, g.verbose);
            opts.ci_api = CiApi::from_env(&env, &me, args.acquire.ci_api_wanted())?;
            opts.reenter = old_owner_rule;
            // This job's own pipeline, as an earlier job's `acquire` would hold the lock.
            opts.own_pipeline = ci::detect(&env, Scope::Pipeline, None)?.map(|p| p.owner).into_iter().collect();
            opts.own_pipeline.extend(g.owner.clone().filter(|_| inherited_owner));
            if old_owner_rule {
                opts.own_pipeline.clear();
            }
            let spec = crate::run::RunSpec {
                argv: args.command.clone(),
                heartbeat: args.heartbeat.as_deref().map(|h| cli::parse_duration("--heartbeat", h)).transpose()?,
                kill_grace: cli::parse_duration("--kill-grace", &args.kill_grace)?,
            };
            crate::lease::check_heartbeat(opts.ttl, spec.heartbeat, opts.clock_margin, spec.kill_grace)?;
            let locker = connect(&url, g).await?;
            crate::run::run(&locker, &lock, &me, &opts, &spec).await
        }
        Command::Acquire(args) => {
            let (lock, me) = (lock()?, identity()?);
            let mut opts = with_progress(args.options(margin, &cli.given, cli::ACQUIRE_TTL)?, g.verbose);
            opts.ci_api = CiApi::from_env(&env, &me, args.ci_api_wanted())?;
            let locker = connect(&url, g).await?;
            let mut signals = Signals::install()?;
            let (cancel, cancelled) = tokio::sync::watch::channel(None);
            opts.cancel = Some(cancelled.clone());
            let grant = signals.during(locker.acquire(&lock, &me, &opts), &cancel).await?;
            if let Some(sig) = *cancelled.borrow() {
                // Granted just as we were told to stop: a job that is going away must not
                // leave the lock held until its lease ends.
                let released = locker.release(&lock, &Holding::grant(&grant), &ReleaseOptions::default()).await;
                return Err(Error::Interrupted {
                    signal: sig,
                    message: format!(
                        "got lock {lock:?} in {url} but signal {sig} arrived meanwhile; {}",
                        match released {
                            Ok(_) => "released it again".to_string(),
                            Err(e) => format!("releasing it failed ({e}); it frees itself when its lease ends"),
                        }
                    ),
                });
            }
            print_grant(&grant, output, locker.store().requests())?;
            export_github(&env, &grant)?;
            Ok(exit::OK)
        }
        Command::Release(args) => {
            let (lock, me) = (lock()?, identity()?);
            let reason = args.reason.as_deref().map(|r| cli::validate_text("reason (--reason)", r)).transpose()?;
            let opts = ReleaseOptions {
                force: args.force.then(|| reason.unwrap_or_default()),
                retention,
            };
            let who = Holding::pipeline(&me.owner, args.token.clone());
            let locker = connect(&url, g).await?;
            let result = locker.release(&lock, &who, &opts).await?;
            let requests = locker.store().requests();
            let text = match &result {
                Released::Released { fence } => {
                    format!("released lock {lock:?} in {url} (fence {fence})")
                }
                Released::NotHeld => {
                    format!("lock {lock:?} in {url} was not held; nothing to release")
                }
                Released::HeldByOther { owner, fence } => {
                    let msg = format!(
                        "lock {lock:?} in {url} is held by {owner} (fence {fence}), not by {}; left alone",
                        me.owner
                    );
                    if args.strict {
                        return Err(Error::HeldByOther(format!("{msg} (--strict)")));
                    }
                    eprintln!("pipeline-lock: warning: {msg}");
                    msg
                }
            };
            emit(
                output,
                &text,
                &serde_json::json!({"lock": lock, "store": url.to_string(), "release": result, "requests": requests}),
            )?;
            Ok(exit::OK)
        }
        Command::Renew(args) => {
            let (lock, me) = (lock()?, identity()?);
            let ttl = match cli::lease(args.ttl.as_deref(), args.disable_ttl, &cli.given, None)? {
                Some(d) => Ttl::For(d),
                None if args.ttl.is_some() || args.disable_ttl => Ttl::NoEnd,
                None => Ttl::Keep,
            };
            let who = Holding::pipeline(&me.owner, args.token.clone());
            let locker = connect(&url, g).await?;
            let grant = locker.renew(&lock, &who, ttl, retention, true).await?;
            let lease = grant
                .lease_expires_at
                .map(|t| format!("lease until {}", rfc3339(t)))
                .unwrap_or_else(|| "no lease end".into());
            let text = format!("renewed lock {lock:?} in {url} for {}: fence {}, {lease}", grant.owner, grant.fence);
            let mut json = serde_json::to_value(&grant).map_err(|e| Error::other("cannot encode the grant", e))?;
            json["requests"] = locker.store().requests().into();
            emit(output, &text, &json)?;
            Ok(exit::OK)
        }
        Command::Status(args) => {
            let lock = lock()?;
            let locker = connect(&url, g).await?;
            let observed = locker.status(&lock).await?;
            let now = locker.store().clock().now_ms();
            let mut json = status_json(&lock, &observed, now, locker.store().requests());
            json["queue"] = queue_json(&observed, now, args.queue);
            emit(output, &status_text(&lock, &url.to_string(), &observed, now, args.queue), &json)?;
            if let State::Corrupt(why) = &observed.state {
                return Err(locker.corrupt(&lock, why));
            }
            Ok(exit::OK)
        }
        Command::List => {
            let locker = connect(&url, g).await?;
            let all = locker.list().await?;
            let now = locker.store().clock().now_ms();
            let mut text = String::new();
            for (name, o) in &all {
                text.push_str(&format!("{name}\t{}\n", summary(o, now)));
            }
            if all.is_empty() {
                text.push_str(&format!("no locks in {url}\n"));
            }
            let json: Vec<_> = all.iter().map(|(n, o)| status_json(n, o, now, 0)).collect();
            emit(output, text.trim_end(), &serde_json::json!({"store": url.to_string(), "locks": json}))?;
            Ok(exit::OK)
        }
        Command::Doctor => {
            let locker = connect(&url, g).await?;
            let checks = locker.store().doctor().await;
            let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
            let text: Vec<String> = checks
                .iter()
                .map(|c| format!("{:<5} {}: {}", format!("{:?}", c.outcome).to_uppercase(), c.name, c.detail))
                .collect();
            emit(
                output,
                &text.join("\n"),
                &serde_json::json!({"store": url.to_string(), "ok": !failed, "checks": checks}),
            )?;
            if failed {
                return Err(Error::Config(format!("{url} failed doctor checks; see the FAIL lines above")));
            }
            Ok(exit::OK)
        }
    }
}

/// The safety checker's negative control for the identity rules: `run` takes its owner from
/// an inherited PIPELINE_LOCK_OWNER and re-enters a grant of that owner, as before v2. Only in
/// test builds (feature `negative-control`).
fn old_owner_rule(env: &EnvFn) -> bool {
    cfg!(feature = "negative-control") && env("PIPELINE_LOCK_TEST_BREAK").as_deref() == Some("old-owner-rule")
}

fn with_progress(mut opts: crate::AcquireOptions, verbose: u8) -> crate::AcquireOptions {
    opts.progress = Some(Arc::new(|r: &WaitReport| eprintln!("pipeline-lock: {}", progress_line(r))));
    if verbose > 0 {
        opts.progress_every = Duration::ZERO;
    }
    opts
}

async fn connect(url: &store::StoreUrl, g: &cli::Global) -> Result<Locker> {
    Ok(Locker::new(store::open(url, &g.aws()).await?))
}

fn emit(output: Output, text: &str, json: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let r = match output {
        Output::Json => writeln!(out, "{json}"),
        _ => writeln!(out, "{text}"),
    };
    r.map_err(|e| Error::other("cannot write to standard output", e))
}

fn env_lines(g: &Grant) -> String {
    format!(
        "PIPELINE_LOCK_NAME={}\nPIPELINE_LOCK_OWNER={}\nPIPELINE_LOCK_TOKEN={}\nPIPELINE_LOCK_FENCE={}\n",
        g.lock, g.owner, g.token, g.fence
    )
}

fn print_grant(g: &Grant, output: Output, requests: u64) -> Result<()> {
    let how = match &g.how {
        How::Acquired => String::new(),
        How::Reentered => " (already ours: lease renewed, same fence)".into(),
        How::TookOver { from, why } => format!(" (taken over from {from}: {why})"),
    };
    let lease = match g.lease_expires_at {
        Some(t) => format!("lease until {}", rfc3339(t)),
        None => "no lease end (--disable-ttl)".into(),
    };
    let text = format!(
        "acquired lock {:?} in {} as {}: fence {}, {lease}{how}",
        g.lock, g.store, g.owner, g.fence
    );
    match output {
        Output::Env => {
            print!("{}", env_lines(g));
            Ok(())
        }
        _ => {
            let mut json = serde_json::to_value(g).map_err(|e| Error::other("cannot encode the grant", e))?;
            json["requests"] = requests.into();
            emit(output, &text, &json)
        }
    }
}

/// Appends the grant to `$GITHUB_ENV` and `$GITHUB_OUTPUT` when they are set.
fn export_github(env: &EnvFn, g: &Grant) -> Result<()> {
    let outputs = format!("name={}\nowner={}\ntoken={}\nfence={}\n", g.lock, g.owner, g.token, g.fence);
    for (var, text) in [("GITHUB_ENV", env_lines(g)), ("GITHUB_OUTPUT", outputs)] {
        if let Some(path) = env(var).filter(|p| !p.is_empty()) {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| Error::other(format!("cannot append the lock's outputs to ${var} ({path})"), e))?;
        }
    }
    Ok(())
}

use crate::clock::rfc3339;

fn ago(now: i64, then: i64) -> String {
    let d = Duration::from_secs(((now - then).max(0) / 1000) as u64);
    humantime::format_duration(d).to_string()
}

/// The line printed while waiting.
pub fn progress_line(r: &WaitReport) -> String {
    let h = &r.holder;
    let waited = format!(
        "attempt {}, waited {}",
        r.attempt,
        humantime::format_duration(Duration::from_secs(r.waited.as_secs()))
    );
    let queue = queue_line(r);
    if h.is_free() {
        return format!(
            "waiting for lock {:?} in {}: free, but others are ahead of us{queue}; {waited}",
            r.lock, r.store
        );
    }
    let url = h
        .holder
        .as_ref()
        .and_then(|x| x.url.as_deref())
        .map(|u| format!(" ({u})"))
        .unwrap_or_default();
    let since = h
        .acquired_at
        .map(|a| format!(" since {} ({} ago)", rfc3339(a), ago(r.now, a)))
        .unwrap_or_default();
    let lease = match h.lease_expires_at {
        Some(end) if end > r.now => format!("lease left {}", ago(end, r.now)),
        Some(_) => "lease ended".into(),
        None => "no lease end".into(),
    };
    let takeover = match r.takeover_at {
        Some(at) if at > r.now => format!("takeover possible in {}", ago(at, r.now)),
        Some(_) => "takeover possible now".into(),
        None => "no takeover possible (no lease end and no --force-after)".into(),
    };
    format!(
        "waiting for lock {:?} in {}: held by {}{url}{since}, fence {}, {lease}{queue}; {waited}; {takeover}",
        r.lock,
        r.store,
        h.owner.as_deref().unwrap_or("?"),
        h.fence,
    )
}

/// `; queue (fifo): 2nd of 3, ahead: OWNER (URL)`, or nothing when nobody else waits.
fn queue_line(r: &WaitReport) -> String {
    let Some(position) = r.position else {
        return if r.queued > 1 {
            format!("; {} waiting (--queue none: first writer wins)", r.queued)
        } else {
            String::new()
        };
    };
    if r.queued <= 1 && position == 1 {
        return String::new();
    }
    let mut ahead: Vec<String> = r
        .ahead
        .iter()
        .take(3)
        .map(|(owner, url)| match url {
            Some(u) => format!("{owner} ({u})"),
            None => owner.clone(),
        })
        .collect();
    if r.ahead.len() > 3 {
        ahead.push(format!("and {} more", r.ahead.len() - 3));
    }
    let ahead = if ahead.is_empty() {
        "next in line".to_string()
    } else {
        format!("ahead: {}", ahead.join(", "))
    };
    format!("; queue ({}): position {position} of {}, {ahead}", r.queue.as_str(), r.queued)
}

fn summary(o: &Observed, now: i64) -> String {
    match &o.state {
        State::Absent => "absent".into(),
        State::Corrupt(why) => format!("UNREADABLE ({why})"),
        State::Valid(r) if r.is_free() => format!("free\tfence {}", r.fence),
        State::Valid(r) => {
            let lease = match r.lease_expires_at {
                Some(end) if end > now => format!("lease left {}", ago(end, now)),
                Some(_) => "lease ended".into(),
                None => "no lease end".into(),
            };
            format!(
                "held by {}\tfence {}\tfor {}\t{lease}",
                r.owner.as_deref().unwrap_or("?"),
                r.fence,
                ago(now, r.acquired_at.unwrap_or(now))
            )
        }
    }
}

fn status_json(lock: &str, o: &Observed, now: i64, requests: u64) -> serde_json::Value {
    let (state, record, problem) = match &o.state {
        State::Absent => ("absent", None, None),
        State::Corrupt(why) => ("unreadable", None, Some(why.clone())),
        State::Valid(r) if r.is_free() => ("free", Some(r), None),
        State::Valid(_) => ("held", o.record(), None),
    };
    serde_json::json!({
        "lock": lock,
        "state": state,
        "record": record,
        "problem": problem,
        "now": now,
        "lease_left_ms": record.and_then(|r: &Record| r.lease_expires_at).map(|e| (e - now).max(0)),
        "requests": requests,
    })
}

/// The queue in order, for `status --output json`.
fn queue_json(o: &Observed, now: i64, mode: QueueMode) -> serde_json::Value {
    let Some(r) = o.record() else {
        return serde_json::json!([]);
    };
    let window = queue::prune_window(Duration::ZERO, queue::PRUNE_FLOOR);
    let entries: Vec<_> = queue::ordered(r, mode)
        .into_iter()
        .enumerate()
        .map(|(i, (token, w))| {
            serde_json::json!({
                "position": i + 1,
                "token": token,
                "owner": w.owner,
                "url": w.url,
                "ordinal": w.ordinal,
                "enqueued_at": w.enqueued_at,
                "seen_at": w.seen_at,
                "waiting_ms": (now - w.enqueued_at).max(0),
                "live": queue::is_live(w, now, window),
            })
        })
        .collect();
    serde_json::Value::Array(entries)
}

fn status_text(lock: &str, url: &str, o: &Observed, now: i64, mode: QueueMode) -> String {
    let mut s = format!("lock:     {lock}\nstore:    {url}\nstate:    {}\n", summary(o, now));
    if let State::Valid(r) = &o.state {
        if let Some(h) = &r.holder {
            for (k, v) in [
                ("pipeline", &h.url),
                ("job", &h.job),
                ("job url", &h.job_url),
                ("host", &h.host),
                ("reason", &h.reason),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!("{:<9} {v}\n", format!("{k}:")));
                }
            }
        }
        if let Some(a) = r.acquired_at {
            s.push_str(&format!("since:    {} ({} ago)\n", rfc3339(a), ago(now, a)));
        }
        if let Some(e) = r.lease_expires_at.filter(|_| !r.is_free()) {
            s.push_str(&format!("lease:    ends {}\n", rfc3339(e)));
        }
        s.push_str(&format!("fence:    {}\n", r.fence));
        if r.waiters.is_empty() {
            s.push_str("queue:    empty\n");
        } else {
            s.push_str(&format!("queue:    ({} order)\n", mode.as_str()));
            let window = queue::prune_window(Duration::ZERO, queue::PRUNE_FLOOR);
            for (i, (_, w)) in queue::ordered(r, mode).into_iter().enumerate() {
                let ordinal = w.ordinal.map(|n| format!(" pipeline {n}")).unwrap_or_default();
                let url = w.url.as_deref().map(|u| format!(" {u}")).unwrap_or_default();
                let stale = if queue::is_live(w, now, window) {
                    String::new()
                } else {
                    format!(" (unseen for {}: dead, pruned next)", ago(now, w.seen_at))
                };
                s.push_str(&format!(
                    "  {}. {}{ordinal} waiting {}{url}{stale}\n",
                    i + 1,
                    w.owner,
                    ago(now, w.enqueued_at)
                ));
            }
        }
        if !r.history.is_empty() {
            s.push_str("history:\n");
            for e in &r.history {
                let by = e.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
                let why = e.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                s.push_str(&format!(
                    "  {} {:<10} {} fence {}{by}{why}\n",
                    rfc3339(e.at),
                    e.event.as_str(),
                    e.owner,
                    e.fence.unwrap_or(0)
                ));
            }
        }
    }
    s.trim_end().to_string()
}
