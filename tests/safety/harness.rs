//! One safety run: a store, the witness, the fault proxy, the contenders and the nemesis;
//! then the checker's report.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::checker::{self, Exit, Input, Report};
use crate::helpers::{Proxy, Witness};
use crate::nemesis::{Fault, Nemesis};
use crate::servers::{Backend, Server};
use crate::tools::{Rng, pinned_binary, signal, tool};
use crate::workload::{Invocation, Workload, lock};

/// The contenders' skew margin (`--clock-margin`): a stale lease keeps others out this much
/// longer. Not the default 2 s: `run` must stop its command (TERM, then KILL a grace later)
/// by its lease end minus the margin, so margin, grace and two heartbeats must fit in the
/// lease (1500 ms here).
pub const CLOCK_MARGIN_MS: u64 = 500;
/// `run --kill-grace` of the contenders (their command, the witness client, does not trap TERM).
pub const KILL_GRACE_MS: u64 = 300;

#[derive(Debug, Clone)]
pub struct Config {
    pub kind: Backend,
    pub contenders: usize,
    /// At least this many successful runs per contender.
    pub iterations: u32,
    pub ttl_ms: u64,
    pub heartbeat_ms: u64,
    pub retry_ms: u64,
    pub faults: Vec<Fault>,
    /// Random faults after the deck of one-of-each, until this much time has passed.
    pub budget: Duration,
    /// `PIPELINE_LOCK_TEST_BREAK`.
    pub broken: Option<&'static str>,
    /// `--queue` for every contender; `None`: fifo or none, by the seed.
    pub queue: Option<&'static str>,
    /// See [`Invocation::prune_floor`].
    pub prune_floor: &'static str,
    pub seed: u64,
    /// A pool workload: `--slots N` (0: the plain mutex).
    pub slots: u32,
    /// In a pool, how many contenders take exclusive holds; the others are `--shared`.
    pub exclusive: usize,
    /// Several locks at once (see [`Invocation::multi`]).
    pub multi: bool,
}

impl Config {
    /// The short run (CI) or the long one (`scripts/safety --long`), per the environment.
    pub fn for_store(kind: Backend) -> Config {
        let long = std::env::var("PIPELINE_LOCK_SAFETY_LONG").is_ok_and(|v| !v.is_empty() && v != "0");
        Config {
            kind,
            contenders: if long { 5 } else { 4 },
            iterations: if long { 40 } else { 10 },
            ttl_ms: 1500,
            heartbeat_ms: 300,
            retry_ms: 100,
            faults: Fault::all_for(kind),
            budget: Duration::from_secs(if long { 180 } else { 0 }),
            broken: None,
            queue: None,
            prune_floor: "1s",
            seed: seed(),
            slots: 0,
            exclusive: 0,
            multi: false,
        }
    }

    /// Several locks at once: 6 contenders on two locks A and B, two of them taking both
    /// (`run --lock A --lock B`), two only A, two only B. The witness has a register per lock
    /// and judges it as a pool of two slots where each holder uses its lock's register: a
    /// holder of A and B beside another holder of either is two in one slot.
    pub fn multi(kind: Backend) -> Config {
        let mut c = Config::pool(kind);
        c.contenders = 6;
        c.slots = 0;
        c.multi = true;
        c
    }

    /// The pool workload: 6 contenders sharing a pool of 3 (`run --slots 3 --shared`), twice
    /// as many as there are slots, so that slots are taken over as well as handed on. (More
    /// contenders crowd a single-threaded moto on a busy machine into missed renewals.)
    pub fn pool(kind: Backend) -> Config {
        let mut c = Config::for_store(kind);
        let long = c.iterations > 10;
        c.contenders = if long { 8 } else { 6 };
        c.iterations = if long { 30 } else { 5 };
        c.slots = 3;
        c
    }

    /// The mixed workload: shared readers and exclusive writers on one lock of 3 slots.
    pub fn mixed(kind: Backend) -> Config {
        let mut c = Config::pool(kind);
        c.contenders = 6;
        c.exclusive = 2;
        c
    }

    /// What the run is called in reports and replay lines.
    pub fn workload(&self) -> String {
        if self.multi {
            return "several locks at once (A+B beside A and B)".into();
        }
        match (self.slots, self.exclusive) {
            (0, _) => "mutex".into(),
            (n, 0) => format!("pool of {n}"),
            (n, x) => format!("mixed, {x} exclusive beside shared, {n} slots"),
        }
    }
}

/// `PIPELINE_LOCK_SAFETY_SEED` replays a run's fault schedule; otherwise a fresh seed.
pub fn seed() -> u64 {
    std::env::var("PIPELINE_LOCK_SAFETY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u32>) as u64
}

pub struct Outcome {
    pub report: Report,
    pub text: String,
}

fn final_status(bin: &Path, server: &Server, store: &str, lock_name: &str) -> (String, Vec<String>) {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["--store", store, "--lock", lock_name, "status", "--output", "json"]);
    if let Some(e) = server.endpoint() {
        cmd.args(["--endpoint-url", &e]);
    }
    if server.kind == Backend::MotoS3 {
        cmd.arg("--s3-force-path-style");
    }
    let out = cmd.output().expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let state = v["state"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("unreadable ({})", String::from_utf8_lossy(&out.stderr).trim()));
    let record = &v["record"];
    let mut owners: Vec<String> = record["Owner"].as_str().map(str::to_string).into_iter().collect();
    if let Some(holds) = record["Shared"].as_object() {
        owners.extend(holds.values().filter_map(|h| h["Owner"].as_str().map(str::to_string)));
    }
    (state, owners)
}

pub fn run(cfg: &Config) -> Outcome {
    let started = Instant::now();
    let name = cfg.kind.name();
    let which = match (cfg.broken.is_some(), cfg.slots, cfg.exclusive) {
        (true, _, _) if cfg.multi => "negative-control-multi".to_string(),
        (false, _, _) if cfg.multi => format!("multi-{name}"),
        (true, 0, _) => "negative-control".to_string(),
        (true, _, _) => "negative-control-pool".to_string(),
        (false, 0, _) => name.to_string(),
        (false, _, 0) => format!("pool-{name}"),
        (false, _, _) => format!("mixed-{name}"),
    };
    let replay = format!("PIPELINE_LOCK_SAFETY_SEED={} scripts/safety {which}", cfg.seed);
    println!("safety run on {name}: seed {} (replay the fault schedule: {replay})", cfg.seed);
    let tag = match (cfg.slots, cfg.exclusive) {
        _ if cfg.multi => "multi-",
        (0, _) => "",
        (_, 0) => "pool-",
        _ => "mixed-",
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("safety/{tag}{name}-{}-{:06x}", cfg.seed, rand::random::<u32>() & 0xff_ffff));
    std::fs::create_dir_all(&dir).unwrap();

    // The queue orders waiters; "none" lets every waiter race for a free or stale lock.
    let queue = cfg.queue.unwrap_or(if cfg.seed.is_multiple_of(3) { "none" } else { "fifo" });
    crate::tools::clear_faketime_leftovers();
    let bin = pinned_binary(&dir, cfg.broken.is_some());
    let mut server = Server::start(cfg.kind, &dir);
    let witness = Witness::start(true);
    let proxy = server.endpoint().map(|_| Proxy::start(&server.addr()));
    let prefix = format!("safety-{:08x}", rand::random::<u32>());
    let store = server.store_url(&prefix);
    let lock_name = "safety/deploy".to_string();
    let multi: Vec<String> = if cfg.multi {
        vec!["safety/db".into(), "safety/cache".into()]
    } else {
        Vec::new()
    };
    // The witness judges several locks as a pool of two registers, one per lock.
    let pool_slots = if cfg.multi { 2 } else { cfg.slots };
    let inv = Invocation {
        store: store.clone(),
        endpoint: proxy.as_ref().map(Proxy::url),
        s3: cfg.kind == Backend::MotoS3,
        lock: lock_name.clone(),
        ttl_ms: cfg.ttl_ms,
        heartbeat_ms: cfg.heartbeat_ms,
        retry_ms: cfg.retry_ms,
        witness: witness.addr(),
        witness_bin: tool("witness").display().to_string(),
        bin: bin.display().to_string(),
        broken: cfg.broken.map(str::to_string),
        queue: queue.to_string(),
        prune_floor: cfg.prune_floor.to_string(),
        slots: cfg.slots,
        exclusive: cfg.exclusive,
        multi: multi.clone(),
    };
    // Generous: the contenders must finish, but a hang must end the run, not the suite.
    let deadline = Instant::now() + cfg.budget + Duration::from_secs(150);
    let epoch = Instant::now();
    let workload = Workload::start(inv, cfg.contenders, cfg.iterations, epoch, deadline, cfg.seed);
    let stale_after = Duration::from_millis(cfg.ttl_ms + CLOCK_MARGIN_MS);
    let mut nemesis = Nemesis {
        rng: Rng::new(cfg.seed),
        witness: &witness,
        proxy: proxy.as_ref(),
        server: &mut server,
        workload: &workload,
        epoch,
        stale_after,
        stop_on_violation: cfg.broken.is_some(),
        pool_slots,
        log: Default::default(),
    };
    nemesis.run(&cfg.faults, cfg.budget);
    let log = std::mem::take(&mut nemesis.log);
    let nemesis_ms = epoch.elapsed().as_millis();
    workload.nemesis_done.store(true, Ordering::SeqCst);
    let slots = workload.slots.clone();
    let records = workload.records.clone();
    workload.join();
    // Anything still running past the deadline is a hang: stop it, and say so below.
    let alive: BTreeSet<String> = lock(&slots).iter().filter_map(|s| s.current.as_ref()).map(|c| c.owner.clone()).collect();
    for c in lock(&slots).iter().filter_map(|s| s.current.as_ref()) {
        signal(-c.pgid, libc::SIGKILL);
    }

    let events = witness.dump();
    // With several locks: held if any is, by the holders of all.
    let (mut final_state, mut final_owners) = ("absent".to_string(), Vec::new());
    for name in if multi.is_empty() { vec![lock_name.clone()] } else { multi.clone() } {
        let (state, owners) = final_status(&bin, &server, &store, &name);
        let rank = |s: &str| ["absent", "free", "held"].iter().position(|k| *k == s).unwrap_or(3);
        if rank(&state) > rank(&final_state) {
            final_state = state;
        }
        final_owners.extend(owners);
    }
    let runs = lock(&records).clone();
    let input = Input {
        events,
        exits: runs
            .iter()
            .map(|r| Exit {
                owner: r.owner.clone(),
                start_ms: r.start_ms,
                end_ms: r.end_ms,
                code: r.code,
                signal: r.signal,
                panicked: r.panicked,
                stderr: r.stderr.clone(),
            })
            .collect(),
        fenced: true,
        killed: log.killed.clone(),
        restarts: log.restarts.clone(),
        slots: lock(&slots).iter().map(|s| (s.successes, s.finished)).collect(),
        min_iterations: cfg.iterations,
        counter: witness.counter(),
        final_state: final_state.clone(),
        final_owners,
        alive,
        // Lease, then the takers' margin, then a poll, a Date-header clock's uncertainty
        // and starting the next command.
        takeover_bound_ms: cfg.ttl_ms + CLOCK_MARGIN_MS + 2000,
        pool_slots,
    };
    let report = checker::check(&input);
    // The pinned binary keeps a replaced build alive on disk: let it go.
    let _ = std::fs::remove_file(&bin);

    let mut text = String::new();
    let _ = writeln!(text, "== safety run on {name}: seed {} ({replay})", cfg.seed);
    let _ = writeln!(
        text,
        "workload: {}; contenders {} x at least {} iterations, lease {} ms, heartbeat {} ms, retry {} ms, queue {queue}{}",
        cfg.workload(),
        cfg.contenders,
        cfg.iterations,
        cfg.ttl_ms,
        cfg.heartbeat_ms,
        cfg.retry_ms,
        cfg.broken.map(|b| format!(", NEGATIVE CONTROL {b}")).unwrap_or_default()
    );
    let _ = writeln!(
        text,
        "time: {:.1} s ({:.1} s of faults)",
        started.elapsed().as_secs_f64(),
        nemesis_ms as f64 / 1000.0
    );
    let faults: Vec<String> = log.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(text, "faults: {} ({} in all)", faults.join(", "), log.counts.values().sum::<u32>());
    if let Some(p) = &proxy {
        let _ = writeln!(text, "proxy: {}", p.stats());
    }
    let stats: Vec<String> = report.stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(text, "stats: {}", stats.join(", "));
    let _ = writeln!(text, "final lock state: {final_state}");
    for l in &log.lines {
        let _ = writeln!(text, "  nemesis {l}");
    }
    for n in &report.notes {
        let _ = writeln!(text, "  note: {n}");
    }
    let _ = writeln!(text, "violations: {}", report.violations.len());
    for v in &report.violations {
        let _ = writeln!(text, "  VIOLATION: {v}");
    }
    let _ = writeln!(text, "files: {}", dir.display());
    std::fs::write(dir.join("report.txt"), &text).unwrap();
    let log_lines: Vec<String> = input.events.iter().map(|e| format!("{e:?}")).collect();
    std::fs::write(dir.join("witness.log"), log_lines.join("\n")).unwrap();
    let run_lines: Vec<String> = runs
        .iter()
        .map(|r| {
            let ft = r.faketime.as_deref().map(|f| format!(" faketime '{f}'")).unwrap_or_default();
            format!(
                "{} c{} {}..{}ms {:?}/{:?}{ft}\n    {}",
                r.owner,
                r.slot,
                r.start_ms,
                r.end_ms,
                r.code,
                r.signal,
                r.stderr.replace('\n', "\n    ")
            )
        })
        .collect();
    std::fs::write(dir.join("runs.log"), run_lines.join("\n")).unwrap();
    let _ = std::fs::create_dir_all(dir.join("stderr"));
    for r in &runs {
        let _ = std::fs::write(dir.join(format!("stderr/{}.txt", r.owner)), &r.full);
    }
    println!("{text}");
    Outcome { report, text }
}
