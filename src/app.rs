//! The commands as the binary runs them: settings in, a printed result and an exit code out.
//! [`run`] checks the whole command line first ([`Settings::build`]), then calls one small
//! function per command; what they print is in [`crate::output`].

use crate::cli::Cli;
use crate::error::{Error, Occupant, Result};
use crate::exit;
use crate::locker::{Holding, Locker, RETENTION, ReleaseOptions, Released, RenewOptions};
use crate::output::{emit, export_github, export_github_all, print_grant, print_grants, queue_json, status_json, status_text, summary};
use crate::settings::{Acquire, List, Release, Renew, Run, Settings, Status, Task};
use crate::signals::Signals;
use crate::store::{self, Outcome, State};

mod state;

/// The environment, read once; tests pass their own.
pub type EnvFn = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Runs one parsed command line. Returns the exit code for success paths that are not 0.
pub async fn run(cli: Cli, env: EnvFn) -> Result<u8> {
    // Validate everything the command needs before connecting to anything.
    let settings = Settings::build(cli, &env)?;
    let result = dispatch(&settings, &env).await;
    // A wait that ended in an error: its GitLab section closes before the error line.
    settings.ci.end_wait();
    if let Err(Error::LeaseLost { message, occupant }) = &result {
        settings.ci.lease_lost(&occupant.lock, settings.owner().unwrap_or_default(), message);
    }
    if let Some(n) = &settings.notify {
        if let Err(Error::LeaseLost { message, occupant }) = &result {
            n.send(crate::notify::Event {
                event: crate::notify::Kind::LeaseLost,
                holder: occupant.owner.clone(),
                why: Some(message.clone()),
                ..crate::notify::base(&occupant.lock, &settings.store.to_string(), settings.owner().unwrap_or_default())
            });
        }
        // Bounded: a receiver that hangs costs at most notify::BOUND, never the exit code.
        n.finish().await;
    }
    result
}

async fn dispatch(settings: &Settings, env: &EnvFn) -> Result<u8> {
    match &settings.command {
        Task::Acquire(a) => cmd_acquire(settings, a, env).await,
        Task::Release(r) => cmd_release(settings, r).await,
        Task::Renew(r) => cmd_renew(settings, r).await,
        Task::Status(s) => cmd_status(settings, s).await,
        Task::List(l) => cmd_list(settings, l).await,
        Task::Doctor => cmd_doctor(settings).await,
        Task::Run(r) => cmd_run(settings, r).await,
        Task::State(t) => state::cmd_state(settings, t).await,
        Task::Serve(c) => crate::serve::serve(connect(settings).await?, &settings.store, c).await,
    }
}

async fn connect(s: &Settings) -> Result<Locker> {
    Ok(Locker::new(store::open(&s.store, &s.aws).await?))
}

async fn cmd_acquire(s: &Settings, a: &Acquire, env: &EnvFn) -> Result<u8> {
    let url = &s.store;
    let locker = connect(s).await?;
    let mut signals = Signals::install()?;
    let (cancel, cancelled) = tokio::sync::watch::channel(None);
    let names = a.locks.join(", ");
    let (opts, seen) = crate::notify::watch_progress(s.ci.around_progress(
        crate::AcquireOptions {
            cancel: Some(cancelled.clone()),
            ..a.opts.clone()
        },
        &names,
    ));
    let wait = signals.during(locker.acquire_all(&a.locks, &a.me, &opts), &cancel);
    let base = crate::notify::base(&names, &url.to_string(), &a.me.owner);
    let waited = crate::notify::while_waiting(s.notify.as_ref(), base, &seen, wait).await;
    s.ci.end_wait();
    let grants = waited?;
    if let Some(sig) = *cancelled.borrow() {
        // Granted just as we were told to stop: a job that is going away must not
        // leave the lock held until its lease ends.
        let mut failed = Vec::new();
        for g in &grants {
            if let Err(e) = locker.release(&g.lock, &Holding::grant(g), &ReleaseOptions::default()).await {
                failed.push(format!("releasing {:?} failed ({e})", g.lock));
            }
        }
        return Err(Error::Interrupted {
            signal: sig,
            message: format!(
                "got lock {names} in {url} but signal {sig} arrived meanwhile; {}",
                match failed.is_empty() {
                    true => "released it again".to_string(),
                    false => format!("{}; it frees itself when its lease ends", failed.join("; ")),
                }
            ),
        });
    }
    for grant in &grants {
        crate::notify::on_grant(s.notify.as_ref(), grant, a.opts.force.is_some());
        s.ci.granted(grant, crate::notify::queued(&seen), a.opts.force.is_some());
    }
    let (requests, units) = (locker.store().requests(), locker.store().write_units());
    match grants.as_slice() {
        [grant] => {
            print_grant(grant, s.output, requests, units)?;
            export_github(env, grant)?;
        }
        _ => {
            print_grants(&grants, s.output, requests, units)?;
            export_github_all(env, &grants)?;
        }
    }
    Ok(exit::OK)
}

/// Runs `one` for each lock in `locks` (release, renew), all of them even when some fail:
/// one lock's result is printed as before; several print a line each (JSON: `locks`). The
/// first error is the command's; the others are printed as they happen.
async fn each_lock<F, Fut>(s: &Settings, locker: &Locker, locks: &[String], one: F) -> Result<u8>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(String, serde_json::Value)>>,
{
    let (mut texts, mut items, mut first) = (Vec::new(), Vec::new(), None);
    for lock in locks {
        match one(lock.clone()).await {
            Ok((text, json)) => {
                texts.push(text);
                items.push(json);
            }
            Err(e) if first.is_none() => first = Some(e),
            Err(e) => eprintln!("pipeline-lock: {}", crate::report::chain(&e)),
        }
    }
    let requests = locker.store().requests();
    let mut json = match items.as_slice() {
        [one] if locks.len() == 1 => one.clone(),
        _ => serde_json::json!({"store": s.store.to_string(), "locks": items}),
    };
    if !texts.is_empty() {
        json["requests"] = requests.into();
        if let Some(units) = locker.store().write_units() {
            json["write_units"] = units.into();
        }
        emit(s.output, &texts.join("\n"), &json)?;
    }
    match first {
        Some(e) => Err(e),
        None => Ok(exit::OK),
    }
}

async fn cmd_release(s: &Settings, r: &Release) -> Result<u8> {
    let url = &s.store;
    let locker = connect(s).await?;
    each_lock(s, &locker, &r.locks, |lock| {
        let locker = &locker;
        async move {
            let result = locker.release(&lock, &r.who, &r.opts).await?;
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
            let fence = match &result {
                Released::Released { fence } => Some(*fence),
                _ => None,
            };
            s.ci.released(&lock, &r.who.owner, fence, &text);
            if let (Some(reason), Some(fence)) = (&r.opts.force, fence) {
                // Break-glass: whoever held it lost it, and should hear so.
                s.ci.warning(
                    "lock force-released",
                    &format!("{} force-released lock {lock:?} (fence {fence}): {reason}", r.who.owner),
                );
                if let Some(n) = &s.notify {
                    n.send(crate::notify::Event {
                        event: crate::notify::Kind::Forced,
                        fence: Some(fence),
                        why: Some(format!("force-released: {reason}")),
                        ..crate::notify::base(&lock, &url.to_string(), &r.who.owner)
                    });
                }
            }
            let json = serde_json::json!({"lock": lock, "store": url.to_string(), "release": result});
            Ok((text, json))
        }
    })
    .await
}

async fn cmd_renew(s: &Settings, r: &Renew) -> Result<u8> {
    let url = &s.store;
    let locker = connect(s).await?;
    each_lock(s, &locker, &r.locks, |lock| {
        let locker = &locker;
        async move {
            let options = RenewOptions {
                ttl: r.ttl,
                retention: RETENTION,
                in_history: true,
            };
            let grant = locker.renew(&lock, &r.who, options).await?;
            let lease = grant
                .lease_expires_at
                .map(|t| format!("lease until {}", crate::clock::rfc3339(t)))
                .unwrap_or_else(|| "no lease end".into());
            let text = format!("renewed lock {lock:?} in {url} for {}: fence {}, {lease}", grant.owner, grant.fence);
            let json = serde_json::to_value(&grant).map_err(|e| Error::other("cannot encode the grant", e))?;
            Ok((text, json))
        }
    })
    .await
}

async fn cmd_status(s: &Settings, st: &Status) -> Result<u8> {
    let locker = connect(s).await?;
    let (mut texts, mut items, mut corrupt) = (Vec::new(), Vec::new(), None);
    for lock in &st.locks {
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
        let mut json = status_json(lock, &observed, now, 0);
        json["queue"] = queue_json(&observed, now, st.queue);
        texts.push(status_text(lock, &s.store.to_string(), &observed, now, st.queue));
        items.push(json);
        if let (State::Corrupt(why), None) = (&observed.state, &corrupt) {
            corrupt = Some(locker.corrupt(lock, why));
        }
    }
    let requests = locker.store().requests();
    let json = match items.as_mut_slice() {
        [one] => {
            one["requests"] = requests.into();
            one.clone()
        }
        _ => serde_json::json!({"store": s.store.to_string(), "locks": items, "requests": requests}),
    };
    emit(s.output, &texts.join("\n\n"), &json)?;
    match corrupt {
        Some(e) => Err(e),
        None => Ok(exit::OK),
    }
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
    let spec = crate::run::RunSpec {
        notify: s.notify.clone(),
        ci: Some(s.ci.clone()),
        ..r.spec.clone()
    };
    crate::run::run(&locker, &r.locks, &r.me, &r.opts, &spec).await
}
