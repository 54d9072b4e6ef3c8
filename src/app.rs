//! The commands as the binary runs them: settings in, a printed result and an exit code out.
//! [`run`] checks the whole command line first ([`Settings::build`]), then calls one small
//! function per command; what they print is in [`crate::output`].

use crate::cli::Cli;
use crate::error::{Error, Occupant, Result};
use crate::exit;
use crate::locker::{Holding, Locker, RETENTION, ReleaseOptions, Released, RenewOptions};
use crate::output::{emit, export_github, print_grant, queue_json, status_json, status_text, summary};
use crate::settings::{Acquire, List, Release, Renew, Run, Settings, Status, Task};
use crate::signals::Signals;
use crate::store::{self, Outcome, State};

/// The environment, read once; tests pass their own.
pub type EnvFn = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Runs one parsed command line. Returns the exit code for success paths that are not 0.
pub async fn run(cli: Cli, env: EnvFn) -> Result<u8> {
    // Validate everything the command needs before connecting to anything.
    let settings = Settings::build(cli, &env)?;
    match &settings.command {
        Task::Acquire(a) => cmd_acquire(&settings, a, &env).await,
        Task::Release(r) => cmd_release(&settings, r).await,
        Task::Renew(r) => cmd_renew(&settings, r).await,
        Task::Status(s) => cmd_status(&settings, s).await,
        Task::List(l) => cmd_list(&settings, l).await,
        Task::Doctor => cmd_doctor(&settings).await,
        Task::Run(r) => cmd_run(&settings, r).await,
        Task::Serve(c) => crate::serve::serve(connect(&settings).await?, &settings.store, c).await,
    }
}

async fn connect(s: &Settings) -> Result<Locker> {
    Ok(Locker::new(store::open(&s.store, &s.aws).await?))
}

async fn cmd_acquire(s: &Settings, a: &Acquire, env: &EnvFn) -> Result<u8> {
    let (lock, url) = (&a.lock, &s.store);
    let locker = connect(s).await?;
    let mut signals = Signals::install()?;
    let (cancel, cancelled) = tokio::sync::watch::channel(None);
    let opts = crate::AcquireOptions {
        cancel: Some(cancelled.clone()),
        ..a.opts.clone()
    };
    let grant = signals.during(locker.acquire(lock, &a.me, &opts), &cancel).await?;
    if let Some(sig) = *cancelled.borrow() {
        // Granted just as we were told to stop: a job that is going away must not
        // leave the lock held until its lease ends.
        let released = locker.release(lock, &Holding::grant(&grant), &ReleaseOptions::default()).await;
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
    print_grant(&grant, s.output, locker.store().requests(), locker.store().write_units())?;
    export_github(env, &grant)?;
    Ok(exit::OK)
}

async fn cmd_release(s: &Settings, r: &Release) -> Result<u8> {
    let (lock, url) = (&r.lock, &s.store);
    let locker = connect(s).await?;
    let result = locker.release(lock, &r.who, &r.opts).await?;
    let requests = locker.store().requests();
    let text = match &result {
        Released::Released { fence } => format!("released lock {lock:?} in {url} (fence {fence})"),
        Released::NotHeld => format!("lock {lock:?} in {url} was not held; nothing to release"),
        Released::HeldByOther { owner, fence } => {
            let msg = format!(
                "lock {lock:?} in {url} is held by {owner} (fence {fence}), not by {}; left alone",
                r.who.owner
            );
            if r.strict {
                return Err(Error::HeldByOther {
                    message: format!("{msg} (--strict)"),
                    occupant: Occupant {
                        lock: lock.to_string(),
                        owner: Some(owner.clone()),
                        fence: Some(*fence),
                    },
                });
            }
            eprintln!("pipeline-lock: warning: {msg}");
            msg
        }
    };
    let mut json = serde_json::json!({"lock": lock, "store": url.to_string(), "release": result, "requests": requests});
    if let Some(units) = locker.store().write_units() {
        json["write_units"] = units.into();
    }
    emit(s.output, &text, &json)?;
    Ok(exit::OK)
}

async fn cmd_renew(s: &Settings, r: &Renew) -> Result<u8> {
    let (lock, url) = (&r.lock, &s.store);
    let locker = connect(s).await?;
    let grant = locker
        .renew(
            lock,
            &r.who,
            RenewOptions {
                ttl: r.ttl,
                retention: RETENTION,
                in_history: true,
            },
        )
        .await?;
    let lease = grant
        .lease_expires_at
        .map(|t| format!("lease until {}", crate::clock::rfc3339(t)))
        .unwrap_or_else(|| "no lease end".into());
    let text = format!("renewed lock {lock:?} in {url} for {}: fence {}, {lease}", grant.owner, grant.fence);
    let mut json = serde_json::to_value(&grant).map_err(|e| Error::other("cannot encode the grant", e))?;
    json["requests"] = locker.store().requests().into();
    emit(s.output, &text, &json)?;
    Ok(exit::OK)
}

async fn cmd_status(s: &Settings, st: &Status) -> Result<u8> {
    let lock = &st.lock;
    let locker = connect(s).await?;
    let observed = locker.status(lock).await?;
    if let (Some(want), Some(r)) = (st.slots, observed.record())
        && r.slot_count() != want
    {
        return Err(Error::Config(format!(
            "lock {lock:?} in {} has {} slot(s), fixed when its record was created, not --slots {want}",
            s.store,
            r.slot_count()
        )));
    }
    let now = locker.store().clock().now_ms();
    let mut json = status_json(lock, &observed, now, locker.store().requests());
    json["queue"] = queue_json(&observed, now, st.queue);
    emit(s.output, &status_text(lock, &s.store.to_string(), &observed, now, st.queue), &json)?;
    if let State::Corrupt(why) = &observed.state {
        return Err(locker.corrupt(lock, why));
    }
    Ok(exit::OK)
}

async fn cmd_list(s: &Settings, l: &List) -> Result<u8> {
    use std::io::Write as _;
    let url = &s.store;
    let locker = connect(s).await?;
    let store = locker.store();
    let json = s.output == crate::cli::Output::Json;
    let failed = |e: std::io::Error| Error::other("cannot write to standard output", e);
    // Printed as the pages arrive, so memory holds one page whatever the store holds. The
    // JSON is one document written as it goes, one lock per line between its first and last
    // lines, so a script may read it whole or line by line.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        let head = serde_json::to_string(&url.to_string()).map_err(|e| Error::other("cannot encode the store URL", e))?;
        write!(out, "{{\"store\":{head},\"locks\":[").map_err(failed)?;
    }
    let (mut after, mut shown, mut next) = (l.after.clone(), 0usize, None);
    'pages: loop {
        let query = store::ListQuery {
            prefix: &l.prefix,
            after: after.as_deref(),
            limit: store::LIST_PAGE,
        };
        let page = store.list_page(&query).await?;
        let now = store.clock().now_ms();
        let mut items = page.items.into_iter().peekable();
        while let Some((name, o)) = items.next() {
            if !l.admits(&o, now) {
                continue;
            }
            if json {
                let sep = if shown == 0 { "\n" } else { ",\n" };
                write!(out, "{sep}{}", status_json(&name, &o, now, 0)).map_err(failed)?;
            } else {
                writeln!(out, "{name}\t{}", summary(&o, now)).map_err(failed)?;
            }
            shown += 1;
            if l.limit == Some(shown) {
                // Stopped inside the page: go on after the last lock shown.
                next = if items.peek().is_some() { Some(name) } else { page.next };
                break 'pages;
            }
        }
        out.flush().map_err(failed)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if json {
        let next = serde_json::to_string(&next).map_err(|e| Error::other("cannot encode the token", e))?;
        writeln!(out, "\n],\"count\":{shown},\"next\":{next}}}").map_err(failed)?;
    } else {
        if shown == 0 {
            let which = if l.filtered() || !l.prefix.is_empty() { " that match" } else { "" };
            writeln!(out, "no locks{which} in {url}").map_err(failed)?;
        }
        if let Some(next) = &next {
            eprintln!("pipeline-lock: more locks: go on with --after {next:?}");
        }
    }
    out.flush().map_err(failed)?;
    Ok(exit::OK)
}

async fn cmd_doctor(s: &Settings) -> Result<u8> {
    let url = &s.store;
    let locker = connect(s).await?;
    let checks = locker.store().doctor().await;
    let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
    let text: Vec<String> = checks
        .iter()
        .map(|c| format!("{:<5} {}: {}", format!("{:?}", c.outcome).to_uppercase(), c.name, c.detail))
        .collect();
    let json = serde_json::json!({"store": url.to_string(), "ok": !failed, "checks": checks});
    emit(s.output, &text.join("\n"), &json)?;
    if failed {
        return Err(Error::Config(format!("{url} failed doctor checks; see the FAIL lines above")));
    }
    Ok(exit::OK)
}

async fn cmd_run(s: &Settings, r: &Run) -> Result<u8> {
    let locker = connect(s).await?;
    crate::run::run(&locker, &r.lock, &r.me, &r.opts, &r.spec).await
}
