//! CI-shaped scenarios: the lock used the way GitLab and GitHub pipelines use it. A pipeline
//! acquires in one process, renews and works in later ones with the environment the templates
//! export (the dotenv lines of `acquire --output env`, the `$GITHUB_ENV` file) and releases in
//! a last one; parallel `run` jobs of one pipeline inherit that environment; stages outlive
//! their lease with and without `renew`; a `run`'s command traps TERM; waiters see store
//! outages and SIGTERM; the lock's record is deleted under a tombstone. Each scenario has its
//! own lock and witness; `ci_checker` judges them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::checker::Report;
use crate::ci_checker::{self, Actor, Scenario, Step};
use crate::helpers::{Proxy, Witness};
use crate::servers::{BUCKET, Backend, Server, TABLE};
use crate::support;
use crate::tools::{pinned_binary, signal, tool};

/// `run`'s lease flags that keep the contract's promise (heartbeat <= (ttl - margin - grace)/2).
/// The margin is a second: the AWS stores' clocks are read from `Date` headers, which count
/// whole seconds, and with 200 ms a taker was seen entering ~0.4 s before the holder's own
/// lease end (moto S3, DynamoDB Local). The grace is longer than twice the margin, so that a
/// `run` that sends TERM only when its lease ends (and KILL a grace later) is caught.
pub const RUN_LEASE: &[&str] = &["--ttl", "6s", "--clock-margin", "1s", "--kill-grace", "3s", "--heartbeat", "1s"];

/// A step that hangs longer than this is killed and reported.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// Everything the scenarios of one test share: the store and the binary under test.
pub struct Ctx {
    pub kind: Backend,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub witness_bin: String,
    pub server: Server,
    /// The S3 prefix, or the file store's directory name.
    pub prefix: String,
    pub broken: Option<&'static str>,
    pub long: bool,
    /// Distinguishes this run's projects and pipeline numbers from other runs'.
    pub tag: String,
}

impl Ctx {
    pub fn start(kind: Backend, broken: Option<&'static str>) -> Ctx {
        let long = std::env::var("PIPELINE_LOCK_SAFETY_LONG").is_ok_and(|v| !v.is_empty() && v != "0");
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("safety/ci-{}-{tag}", kind.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = match std::env::var_os("PIPELINE_LOCK_SAFETY_BIN").filter(|b| !b.is_empty()) {
            // Another build under test (an older one, to see the scenarios fail).
            Some(other) => {
                let pinned = dir.join("pipeline-lock");
                std::fs::copy(&other, &pinned).unwrap_or_else(|e| panic!("PIPELINE_LOCK_SAFETY_BIN {other:?}: {e}"));
                pinned
            }
            None => pinned_binary(&dir, broken.is_some()),
        };
        let server = Server::start(kind, &dir);
        Ctx {
            kind,
            witness_bin: tool("witness").display().to_string(),
            bin,
            server,
            prefix: format!("ci-{tag}"),
            broken,
            long,
            tag,
            dir,
        }
    }

    fn store_url(&self) -> String {
        self.server.store_url(&self.prefix)
    }

    /// Deletes the lock's record behind the tool's back, as DynamoDB's TTL or an operator
    /// would; panics unless there was one.
    pub fn delete_record(&self, lock: &str) {
        let name = encode(lock);
        match self.kind {
            Backend::File => {
                let path = self.dir.join("locks").join(format!("{name}.lock"));
                std::fs::remove_file(&path).unwrap_or_else(|e| panic!("delete {}: {e}", path.display()));
            }
            Backend::DynamoLocal | Backend::MotoDynamo => {
                use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
                let client = support::dynamo_client(&self.server.endpoint().unwrap());
                let old = block_on(
                    client
                        .delete_item()
                        .table_name(TABLE)
                        .key("LockID", AttributeValue::S(lock.to_string()))
                        .return_values(ReturnValue::AllOld)
                        .send(),
                )
                .unwrap_or_else(|e| panic!("DeleteItem {lock}: {e:?}"));
                assert!(old.attributes.is_some(), "DeleteItem {lock}: there was no record");
            }
            Backend::MotoS3 => {
                let client = support::s3_client(&self.server.endpoint().unwrap());
                let key = format!("{}/{name}.lock", self.prefix);
                block_on(client.head_object().bucket(BUCKET).key(&key).send()).unwrap_or_else(|e| panic!("HeadObject {key}: {e:?}"));
                block_on(client.delete_object().bucket(BUCKET).key(&key).send()).unwrap_or_else(|e| panic!("DeleteObject {key}: {e:?}"));
            }
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The tool's lock-name encoding in file names and S3 keys (src/store/url.rs).
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The environment a CI system gives one job.
#[derive(Debug, Clone)]
pub enum Ci {
    /// A GitLab pipeline; its server is reached on a port and under a path (CI_SERVER_URL).
    GitLab { project: String, pipeline: u64 },
    /// A GitHub workflow run.
    GitHub { repo: String, run: u64 },
}

impl Ci {
    /// The variables of job `job` of this pipeline (GitLab: CI_JOB_ID; GitHub: GITHUB_JOB).
    fn vars(&self, job: &str) -> Vec<(String, String)> {
        let v = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        match self {
            Ci::GitLab { project, pipeline } => v(&[
                ("GITLAB_CI", "true".into()),
                ("CI_SERVER_HOST", "gitlab.example.test".into()),
                ("CI_SERVER_URL", "https://gitlab.example.test:8443/gitlab".into()),
                ("CI_PROJECT_PATH", project.clone()),
                ("CI_PIPELINE_ID", pipeline.to_string()),
                ("CI_PIPELINE_IID", (pipeline % 1000).to_string()),
                ("CI_JOB_ID", job.to_string()),
                ("CI_JOB_NAME", format!("job-{job}")),
            ]),
            Ci::GitHub { repo, run } => v(&[
                ("GITHUB_ACTIONS", "true".into()),
                ("GITHUB_SERVER_URL", "https://github.com".into()),
                ("GITHUB_REPOSITORY", repo.clone()),
                ("GITHUB_RUN_ID", run.to_string()),
                ("GITHUB_RUN_NUMBER", (run % 1000).to_string()),
                ("GITHUB_RUN_ATTEMPT", "1".into()),
                ("GITHUB_JOB", job.to_string()),
            ]),
        }
    }
}

/// One scenario: its lock (the CI project path, so no step names it), witness and proxy.
pub struct Lane<'a> {
    pub ctx: &'a Ctx,
    pub name: &'static str,
    pub project: String,
    pub witness: Witness,
    /// A second resource, guarded by another lock of the scenario.
    pub side: Witness,
    /// Between this lane's processes and the store (networked stores); its URL stays the same
    /// when the scenario stops and restarts it.
    pub proxy: Mutex<Option<Proxy>>,
    proxy_url: Option<String>,
    /// Each actor, and whether it works on the side witness.
    actors: Mutex<BTreeMap<String, (Actor, bool)>>,
    next_pipeline: Mutex<u64>,
}

/// What a pipeline carries from job to job: the exported PIPELINE_LOCK_* lines.
pub type Exported = Vec<(String, String)>;

impl<'a> Lane<'a> {
    pub fn new(ctx: &'a Ctx, name: &'static str) -> Lane<'a> {
        let proxy = ctx.server.endpoint().map(|_| Proxy::start(&ctx.server.addr()));
        let proxy_url = proxy.as_ref().map(Proxy::url);
        Lane {
            ctx,
            name,
            project: format!("group/{}-{}", name, ctx.tag),
            witness: Witness::start(true),
            side: Witness::start(true),
            proxy: Mutex::new(proxy),
            proxy_url,
            actors: Mutex::new(BTreeMap::new()),
            next_pipeline: Mutex::new(0),
        }
    }

    /// A command to the lane's proxy, if there is one.
    pub fn proxy_command(&self, line: &str) {
        if let Some(p) = self.proxy.lock().unwrap().as_ref() {
            p.command(line);
        }
    }

    /// A new pipeline of this lane's project (unique numbers per run).
    pub fn gitlab(&self) -> (String, Ci) {
        let n = self.number();
        (
            format!("gl-{n}"),
            Ci::GitLab {
                project: self.project.clone(),
                pipeline: n,
            },
        )
    }

    pub fn github(&self) -> (String, Ci) {
        let n = self.number();
        (
            format!("gh-{n}"),
            Ci::GitHub {
                repo: self.project.clone(),
                run: n,
            },
        )
    }

    fn number(&self) -> u64 {
        let mut n = self.next_pipeline.lock().unwrap();
        *n += 1;
        let base = u64::from_str_radix(&self.ctx.tag, 16).unwrap_or(0) * 100;
        base + *n
    }

    pub fn actor(&self, name: &str, pipeline: bool, may_lose: bool) {
        self.add(name, pipeline, may_lose, false);
    }

    /// A `run` job that works on the side witness.
    pub fn side_actor(&self, name: &str) {
        self.add(name, false, false, true);
    }

    fn add(&self, name: &str, pipeline: bool, may_lose: bool, side: bool) {
        let a = Actor {
            name: name.to_string(),
            pipeline,
            may_lose,
            steps: Vec::new(),
        };
        self.actors.lock().unwrap().insert(name.to_string(), (a, side));
    }

    /// The tool, in job `job` of `ci`, with what earlier jobs exported; through `endpoint`
    /// when given, else through this lane's proxy.
    pub fn tool(&self, ci: &Ci, job: &str, exported: &Exported, endpoint: Option<&str>) -> Command {
        let mut c = Command::new(&self.ctx.bin);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PIPELINE_LOCK_STORE", self.ctx.store_url());
        if let Some(e) = endpoint.map(str::to_string).or_else(|| self.proxy_url.clone()) {
            c.env("PIPELINE_LOCK_ENDPOINT_URL", e);
        }
        if self.ctx.kind == Backend::MotoS3 {
            c.env("PIPELINE_LOCK_S3_FORCE_PATH_STYLE", "true");
        }
        if let Some(b) = self.ctx.broken {
            c.env("PIPELINE_LOCK_TEST_BREAK", b);
        }
        c.envs(ci.vars(job)).envs(exported.iter().cloned());
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        c
    }

    /// The witness client as a CI job's script: `--as NAME` and the exported fence.
    pub fn work(&self, ci: &Ci, job: &str, exported: &Exported, name: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(&self.ctx.witness_bin);
        c.env_clear().envs(ci.vars(job)).envs(exported.iter().cloned());
        c.args(["client", &self.witness.addr(), "--as", name]).args(extra);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        c
    }

    /// `run ... -- witness client --as NAME EXTRA...` arguments.
    pub fn run_args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        self.run_args_on(&self.witness, name, extra)
    }

    pub fn run_args_on(&self, witness: &Witness, name: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into()];
        v.extend(RUN_LEASE.iter().map(|s| s.to_string()));
        v.extend(["--wait", "60s", "--retry-interval", "100ms", "--"].map(String::from));
        v.extend([self.ctx.witness_bin.clone(), "client".into(), witness.addr(), "--as".into(), name.into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Runs one step to its end (at most [`STEP_LIMIT`]) and records it for `actor`.
    pub fn step(&self, actor: &str, what: &str, allowed: &[i32], cmd: Command) -> Output {
        let child = self.spawn(cmd);
        self.finish(actor, what, allowed, child)
    }

    pub fn spawn(&self, mut cmd: Command) -> Spawned {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Spawned {
            pid: child.id() as i32,
            child,
            started: Instant::now(),
        }
    }

    /// Waits for a step started with [`Lane::spawn`] and records it.
    pub fn finish(&self, actor: &str, what: &str, allowed: &[i32], s: Spawned) -> Output {
        let (tx, rx) = mpsc::channel::<()>();
        let pgid = s.pid;
        let watchdog = std::thread::spawn(move || {
            if rx.recv_timeout(STEP_LIMIT).is_err() {
                signal(-pgid, libc::SIGKILL);
            }
        });
        let out = s.child.wait_with_output().expect("wait for a step");
        let _ = tx.send(());
        let _ = watchdog.join();
        let stderr = String::from_utf8_lossy(&out.stderr);
        {
            use std::io::Write as _;
            let path = self.ctx.dir.join(format!("steps-{}.log", self.name));
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(
                    f,
                    "== {actor}: {what} -> {:?} in {} ms\n{stderr}",
                    out.status,
                    s.started.elapsed().as_millis()
                );
            }
        }
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        let step = Step {
            what: what.to_string(),
            tool: !what.starts_with("work"),
            code: out.status.code(),
            signal: out.status.signal(),
            allowed: allowed.to_vec(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            ms: s.started.elapsed().as_millis() as u64,
        };
        let mut actors = self.actors.lock().unwrap();
        let (a, _) = actors.get_mut(actor).unwrap_or_else(|| panic!("unknown actor {actor}"));
        a.steps.push(step);
        out
    }

    /// `acquire` in the pipeline's first job; returns what it exported (GitLab: the dotenv
    /// lines on stdout; GitHub: what it appended to `$GITHUB_ENV`).
    pub fn acquire(&self, actor: &str, ci: &Ci, args: &[&str], allowed: &[i32]) -> Exported {
        self.acquire_in(actor, ci, "lock", &Vec::new(), args, allowed, &format!("acquire {}", args.join(" ")))
    }

    /// `acquire` in job `job`, with what earlier jobs exported. On GitHub the job's
    /// `$GITHUB_ENV` starts with those lines, and the file as the runner reads it (the last
    /// line of a name wins) is what the job's later steps see.
    #[allow(clippy::too_many_arguments)]
    pub fn acquire_in(&self, actor: &str, ci: &Ci, job: &str, exported: &Exported, args: &[&str], allowed: &[i32], what: &str) -> Exported {
        let github_env = self.ctx.dir.join(format!("{}-{actor}-{job}-github-env", self.name));
        let mut cmd = self.tool(ci, job, exported, None);
        cmd.arg("acquire").args(args);
        match ci {
            Ci::GitLab { .. } => {
                cmd.args(["--output", "env"]);
            }
            Ci::GitHub { .. } => {
                let lines: String = exported.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                std::fs::write(&github_env, lines).unwrap();
                cmd.env("GITHUB_ENV", &github_env);
            }
        }
        let out = self.step(actor, what, allowed, cmd);
        let text = match ci {
            Ci::GitLab { .. } => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ci::GitHub { .. } => std::fs::read_to_string(&github_env).unwrap_or_default(),
        };
        dotenv(&text)
    }

    /// What the checker judges: the main witness's scenario, and the side witness's if used.
    pub fn scenarios(&self) -> Vec<(String, Scenario)> {
        let actors = self.actors.lock().unwrap();
        let mut out = Vec::new();
        for (label, w, side) in [
            (self.name.to_string(), &self.witness, false),
            (format!("{}/side", self.name), &self.side, true),
        ] {
            let mine: Vec<Actor> = actors.values().filter(|(_, s)| *s == side).map(|(a, _)| a.clone()).collect();
            if side && mine.is_empty() {
                continue;
            }
            out.push((
                label,
                Scenario {
                    events: w.dump(),
                    counter: w.counter(),
                    actors: mine,
                },
            ));
        }
        out
    }
}

/// A step running in the background.
pub struct Spawned {
    pub pid: i32,
    child: Child,
    started: Instant,
}

/// `NAME=VALUE` lines (a dotenv artifact, a `$GITHUB_ENV` file); the last one of a name wins,
/// as it does for the runner.
pub fn dotenv(text: &str) -> Exported {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    map.into_iter().collect()
}

fn fence_of(e: &Exported) -> String {
    e.iter()
        .find(|(k, _)| k == "PIPELINE_LOCK_FENCE")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Waits until the witness shows `name` inside.
fn wait_inside(w: &Witness, name: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if w.open().iter().any(|(o, _)| o == name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until the lock's queue holds an entry of pipeline `name` (`gl-N`: an owner ending in
/// `/pipelines/N`), so that the next waiter queues behind it, and a signal finds it waiting.
fn wait_queued(lane: &Lane, ci: &Ci, name: &str) -> bool {
    let suffix = format!("/pipelines/{}", name.trim_start_matches("gl-"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut status = lane.tool(ci, "observer", &Vec::new(), None);
        status.args(["status", "--output", "json"]);
        if let Ok(out) = status.output() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let queued = v["record"]["Waiters"]
                .as_object()
                .is_some_and(|w| w.values().any(|e| e["Owner"].as_str().is_some_and(|o| o.ends_with(&suffix))));
            if queued {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

// The scenarios. Pipeline-scoped leases are a few seconds unless the scenario is about
// leases, so that slow process starts on a busy machine never make a lease run out where the
// scenario says it must not.

/// Three pipelines (two GitLab, one GitHub) contend for their project's lock, shaped like the
/// templates: acquire in a first job; "build" renews and works with the exported environment;
/// "deploy" starts with a re-entrant acquire (`.pipeline-lock:reacquire`) and works with what
/// that exported; "verify" renews and works with the first job's exports again; a last job
/// releases. The GitHub run's first job also takes a second lock, so `$GITHUB_ENV` ends with
/// that grant's name and token: its later renew and release name the project's lock with
/// `--lock` and a token that is not that lock's. All must go green, one after another.
pub fn pipelines(lane: &Lane) {
    std::thread::scope(|s| {
        for i in 0..3 {
            s.spawn(move || {
                let github = i == 2;
                let (name, ci) = if github { lane.github() } else { lane.gitlab() };
                lane.actor(&name, true, false);
                let acquire = ["--ttl", "10s", "--wait", "60s", "--retry-interval", "150ms"];
                let first = lane.acquire(&name, &ci, &acquire, &[0]);
                let db = format!("{}/db", lane.project);
                // What later jobs are handed; on GitHub the second grant's lines came last.
                let handed = if github {
                    let args = ["--lock", db.as_str(), "--ttl", "10s", "--wait", "60s", "--retry-interval", "150ms"];
                    lane.acquire_in(&name, &ci, "lock", &first, &args, &[0], "acquire --lock .../db (same job)")
                } else {
                    first.clone()
                };
                let lock: &[&str] = if github { &["--lock", &lane.project] } else { &[] };
                let work = ["--writes", "3", "--gap", "40"];
                let mut renew = lane.tool(&ci, "11", &handed, None);
                renew.args(lock).arg("renew");
                lane.step(&name, "renew (build)", &[0], renew);
                lane.step(&name, "work (build)", &[0], lane.work(&ci, "11", &first, &name, &work));
                let mut reacquire: Vec<&str> = lock.to_vec();
                reacquire.extend(["--ttl", "10s", "--no-wait"]);
                let again = lane.acquire_in(&name, &ci, "12", &handed, &reacquire, &[0], "re-entrant acquire (deploy)");
                let mut renew = lane.tool(&ci, "12", &again, None);
                renew.arg("renew");
                lane.step(&name, "renew (deploy)", &[0], renew);
                lane.step(&name, "work (deploy)", &[0], lane.work(&ci, "12", &again, &name, &work));
                let mut renew = lane.tool(&ci, "13", &handed, None);
                renew.args(lock).arg("renew");
                lane.step(&name, "renew (verify, handed token)", &[0], renew);
                lane.step(&name, "work (verify)", &[0], lane.work(&ci, "13", &first, &name, &work));
                let mut release = lane.tool(&ci, "14", &handed, None);
                release.args(lock).arg("release");
                lane.step(&name, "release (handed token)", &[0], release);
                if github {
                    let mut release = lane.tool(&ci, "14", &handed, None);
                    release.args(["--lock", &db, "release"]);
                    lane.step(&name, "release --lock .../db", &[0], release);
                }
            });
        }
    });
}

/// One GitLab pipeline holds its project's lock; its later jobs inherit the dotenv. Three
/// parallel jobs `run --lock .../migrations`, and two legs of a GitHub matrix job (same
/// GITHUB_JOB, no index) that inherited their run's `$GITHUB_ENV` do the same: all must
/// exclude each other. A later job's `run` on the pipeline's own lock (the dotenv names it)
/// must refuse at once (73), not re-enter and release it: another pipeline waits for it.
pub fn parallel_jobs(lane: &Lane) {
    let migrations = format!("{}/migrations", lane.project);
    let (p, ci) = lane.gitlab();
    lane.actor(&p, true, false);
    let env = lane.acquire(&p, &ci, &["--ttl", "30s", "--no-wait"], &[0]);
    let (gh, gh_ci) = lane.github();
    lane.actor(&gh, true, false);
    // The GitHub run holds a lock of its own (another project), so its legs inherit it.
    let gh_env = {
        let Ci::GitHub { run, .. } = gh_ci else { unreachable!() };
        let other = Ci::GitHub {
            repo: format!("{}-gh", lane.project),
            run,
        };
        let e = lane.acquire(&gh, &other, &["--ttl", "30s", "--no-wait"], &[0]);
        (other, e)
    };
    std::thread::scope(|s| {
        // Another pipeline of the project waits for the lock all along.
        s.spawn(|| {
            let (q, qci) = lane.gitlab();
            lane.actor(&q, true, false);
            let qenv = lane.acquire(&q, &qci, &["--ttl", "30s", "--wait", "60s", "--retry-interval", "150ms"], &[0]);
            lane.step(&q, "work", &[0], lane.work(&qci, "31", &qenv, &q, &["--writes", "2", "--gap", "30"]));
            let mut release = lane.tool(&qci, "32", &qenv, None);
            release.arg("release");
            lane.step(&q, "release", &[0], release);
        });
        std::thread::sleep(Duration::from_millis(300));
        lane.step(
            &p,
            "work (build)",
            &[0],
            lane.work(&ci, "21", &env, &p, &["--writes", "2", "--gap", "30"]),
        );
        // Stage "migrate": parallel run jobs with the inherited environment.
        std::thread::scope(|m| {
            for job in ["22", "23", "24"] {
                let (ci, env, migrations) = (&ci, &env, &migrations);
                let name = format!("{p}/job-{job}");
                lane.side_actor(&name);
                m.spawn(move || {
                    let mut run = lane.tool(ci, job, env, None);
                    run.args(["--lock", migrations])
                        .args(lane.run_args_on(&lane.side, &name, &["--writes", "4", "--gap", "40"]));
                    lane.step(&name, "run --lock migrations", &[0], run);
                });
            }
            for leg in ["leg-0", "leg-1"] {
                let (other, e) = (&gh_env.0, &gh_env.1);
                let migrations = &migrations;
                let name = format!("{gh}/migrate/{leg}");
                lane.side_actor(&name);
                m.spawn(move || {
                    // Both legs: GITHUB_JOB=migrate, no PIPELINE_LOCK_MATRIX_INDEX.
                    let mut run = lane.tool(other, "migrate", e, None);
                    run.args(["--lock", migrations])
                        .args(lane.run_args_on(&lane.side, &name, &["--writes", "4", "--gap", "40"]));
                    lane.step(&name, "run --lock migrations (matrix leg)", &[0], run);
                });
            }
        });
        // Stage "smoke": `run` without --lock names the pipeline's own lock (dotenv).
        let smoke = format!("{p}/job-25");
        lane.actor(&smoke, false, false);
        let mut run = lane.tool(&ci, "25", &env, None);
        run.args(lane.run_args(&smoke, &["--writes", "2", "--gap", "30"]));
        lane.step(&smoke, "run on the pipeline's own lock", &[73], run);
        // Stage "deploy": the pipeline still holds its lock.
        let mut renew = lane.tool(&ci, "26", &env, None);
        renew.arg("renew");
        lane.step(&p, "renew (deploy)", &[0], renew);
        lane.step(
            &p,
            "work (deploy)",
            &[0],
            lane.work(&ci, "26", &env, &p, &["--writes", "3", "--gap", "40"]),
        );
        let mut release = lane.tool(&ci, "27", &env, None);
        release.arg("release");
        lane.step(&p, "release", &[0], release);
        let mut release = lane.tool(&gh_env.0, "unlock", &gh_env.1, None);
        release.arg("release");
        lane.step(&gh, "release", &[0], release);
    });
}

/// A stage longer than the lease without renewing: a waiting pipeline takes over when the
/// lease ends, the stale pipeline's later writes are refused, and its release must exit 76.
/// On a second lock the same long stage renews first (`renew --ttl`) and keeps the lock.
pub fn long_stages(lane: &Lane) {
    let (writes, gap) = ("14", "250"); // 3.5 s of work against a 2 s lease
    // The waiter starts once the holder has the lock (a fixed head start loses to a slow
    // first request on a busy machine, and the waiter then wins the race for the lock).
    let (held, holder_has_it) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let (l1, ci) = lane.gitlab();
            lane.actor(&l1, true, true);
            let env = lane.acquire(&l1, &ci, &["--ttl", "2s", "--clock-margin", "200ms", "--no-wait"], &[0]);
            let _ = held.send(());
            lane.witness.mark(&format!("{l1} acquired fence {}, lease 2s, no renew", fence_of(&env)));
            lane.step(
                &l1,
                "work (a stage of 3.5 s)",
                &[0, 10],
                lane.work(&ci, "41", &env, &l1, &["--writes", writes, "--gap", gap]),
            );
            let mut release = lane.tool(&ci, "42", &env, None);
            release.arg("release");
            // 76: it was taken over; 0 only if nobody took it (then nobody was waiting).
            lane.step(&l1, "release", &[0, 76], release);
        });
        s.spawn(move || {
            let _ = holder_has_it.recv();
            let (l2, ci) = lane.gitlab();
            lane.actor(&l2, true, false);
            let args = ["--ttl", "5s", "--clock-margin", "200ms", "--wait", "60s", "--retry-interval", "100ms"];
            let env = lane.acquire(&l2, &ci, &args, &[0]);
            lane.step(&l2, "work", &[0], lane.work(&ci, "51", &env, &l2, &["--writes", "2", "--gap", "30"]));
            let mut release = lane.tool(&ci, "52", &env, None);
            release.arg("release");
            lane.step(&l2, "release", &[0], release);
        });
    });
}

/// The same long stage on a GitHub run that renews at the stage's start: it keeps the lock,
/// and the waiting run gets it only after its release.
pub fn long_stages_renewed(lane: &Lane) {
    let (held, holder_has_it) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let (l3, ci) = lane.github();
            lane.actor(&l3, true, false);
            let env = lane.acquire(&l3, &ci, &["--ttl", "2s", "--clock-margin", "200ms", "--no-wait"], &[0]);
            let mut renew = lane.tool(&ci, "deploy", &env, None);
            renew.args(["renew", "--ttl", "12s"]);
            lane.step(&l3, "renew --ttl 12s", &[0], renew);
            let _ = held.send(());
            lane.step(
                &l3,
                "work (a stage of 3.5 s)",
                &[0],
                lane.work(&ci, "deploy", &env, &l3, &["--writes", "14", "--gap", "250"]),
            );
            let mut release = lane.tool(&ci, "unlock", &env, None);
            release.arg("release");
            lane.step(&l3, "release", &[0], release);
        });
        s.spawn(move || {
            let _ = holder_has_it.recv();
            let (l4, ci) = lane.github();
            lane.actor(&l4, true, false);
            let args = ["--ttl", "5s", "--clock-margin", "200ms", "--wait", "60s", "--retry-interval", "100ms"];
            let env = lane.acquire(&l4, &ci, &args, &[0]);
            lane.step(&l4, "work", &[0], lane.work(&ci, "deploy", &env, &l4, &["--writes", "2", "--gap", "30"]));
            let mut release = lane.tool(&ci, "unlock", &env, None);
            release.arg("release");
            lane.step(&l4, "release", &[0], release);
        });
    });
}

/// A `run` holder is cut off from its store (its own proxy blackholes; on the file store its
/// directory path stops resolving) while its command traps TERM and keeps writing; another
/// job waits. The command must be dead before the taker begins.
pub fn trap_term(lane: &Lane) {
    let (h, ci) = lane.gitlab();
    let (t, tci) = lane.gitlab();
    let holder = format!("{h}/job-61");
    let taker = format!("{t}/job-71");
    lane.actor(&holder, false, false);
    lane.actor(&taker, false, false);
    // The holder's own path to the store, which the scenario cuts.
    let own_proxy = lane.ctx.server.endpoint().map(|_| Proxy::start(&lane.ctx.server.addr()));
    let link = lane.ctx.dir.join(format!("locks-{}-{h}", lane.name));
    let mut cmd = lane.tool(&ci, "61", &Vec::new(), own_proxy.as_ref().map(Proxy::url).as_deref());
    if lane.ctx.kind == Backend::File {
        std::os::unix::fs::symlink(lane.ctx.dir.join("locks"), &link).unwrap();
        cmd.env("PIPELINE_LOCK_STORE", format!("file://{}", link.display()));
    }
    cmd.args(lane.run_args(&holder, &["--trap-term", "--writes", "300", "--gap", "50"]));
    let held = lane.spawn(cmd);
    assert!(wait_inside(&lane.witness, &holder, Duration::from_secs(20)), "{holder} never began");
    let mut run = lane.tool(&tci, "71", &Vec::new(), None);
    run.args(lane.run_args(&taker, &["--writes", "2", "--gap", "30"]));
    let waiting = lane.spawn(run);
    // Let a renewal through (heartbeat 1 s), then cut the holder off.
    std::thread::sleep(Duration::from_millis(1300));
    lane.witness.mark(&format!("cut {holder} off from the store"));
    match &own_proxy {
        Some(p) => p.command("set blackhole 1.0"),
        None => cut_file_link(&link),
    }
    lane.finish(&holder, "run (command traps TERM; cut off)", &[76], held);
    lane.finish(&taker, "run (waits)", &[0], waiting);
    if let Some(p) = &own_proxy {
        p.command("set pass");
    }
}

/// Points the holder's store directory at something that is not a directory, atomically.
fn cut_file_link(link: &Path) {
    let tmp = link.with_extension("cut");
    std::os::unix::fs::symlink("/dev/null", &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Waiters on a held lock: the first rides out a 4 s store outage and 1.5 s of 500s (its
/// --wait is a minute); the second is SIGTERMed while waiting and must leave the queue; the
/// third, queued behind it, must get the lock well before a left-behind entry would be pruned
/// (30 s).
pub fn waiters(lane: &Lane) {
    let (h, ci) = lane.gitlab();
    lane.actor(&h, true, false);
    let env = lane.acquire(&h, &ci, &["--ttl", "60s", "--no-wait"], &[0]);
    lane.step(
        &h,
        "work (before)",
        &[0],
        lane.work(&ci, "81", &env, &h, &["--writes", "2", "--gap", "30"]),
    );
    let wait = ["--ttl", "10s", "--wait", "60s", "--retry-interval", "300ms"];
    let mut started = Vec::new();
    for (i, w) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let (name, wci) = lane.gitlab();
        lane.actor(&name, true, false);
        let mut cmd = lane.tool(&wci, "lock", &Vec::new(), None);
        let args: &[&str] = if i == 2 {
            &["--ttl", "10s", "--wait", "25s", "--retry-interval", "300ms"]
        } else {
            &wait
        };
        cmd.arg("acquire").args(args).args(["--output", "env"]);
        let spawned = lane.spawn(cmd);
        if !wait_queued(lane, &wci, &name) {
            lane.witness.mark(&format!("{w} ({name}) not seen in the queue after 20 s"));
        }
        started.push((w, name, wci, spawned, format!("acquire {}", args.join(" "))));
    }
    let (_, w2, _, w2_proc, _) = started.remove(1);
    lane.witness.mark(&format!("SIGTERM {w2} (waiting)"));
    signal(w2_proc.pid, libc::SIGTERM);
    lane.finish(&w2, "acquire (SIGTERM while waiting)", &[143], w2_proc);
    if lane.proxy_url.is_some() {
        lane.witness.mark("store unreachable for 4 s (blackhole)");
        lane.proxy_command("set blackhole 1.0");
        std::thread::sleep(Duration::from_secs(4));
        lane.witness.mark("store answers 500 for 1.5 s");
        lane.proxy_command("set fail 1.0");
        std::thread::sleep(Duration::from_millis(1500));
        lane.proxy_command("set pass");
        // The endpoint itself killed for 4 s (connections refused), then back on its port.
        lane.witness.mark("endpoint killed for 4 s");
        let port = {
            let mut p = lane.proxy.lock().unwrap();
            let port = p.as_ref().map(|p| p.port).unwrap_or(0);
            *p = None;
            port
        };
        std::thread::sleep(Duration::from_secs(4));
        *lane.proxy.lock().unwrap() = Some(Proxy::start_on(&lane.ctx.server.addr(), port));
        lane.witness.mark("endpoint back");
    }
    lane.step(
        &h,
        "work (after)",
        &[0],
        lane.work(&ci, "82", &env, &h, &["--writes", "2", "--gap", "30"]),
    );
    let mut release = lane.tool(&ci, "83", &env, None);
    release.arg("release");
    lane.step(&h, "release", &[0], release);
    for (_, name, wci, proc_, what) in started {
        let out = lane.finish(&name, &what, &[0], proc_);
        let wenv = dotenv(&String::from_utf8_lossy(&out.stdout));
        if wenv.is_empty() {
            continue;
        }
        lane.step(
            &name,
            "work",
            &[0],
            lane.work(&wci, "91", &wenv, &name, &["--writes", "2", "--gap", "30"]),
        );
        let mut release = lane.tool(&wci, "92", &wenv, None);
        release.arg("release");
        lane.step(&name, "release", &[0], release);
    }
}

/// Pipelines one after another, with the lock's record deleted (TTL, an operator) between
/// some of them: every new grant's fence must still be above every fence before it.
pub fn tombstones(lane: &Lane) {
    let one = |delete_before: bool| {
        if delete_before {
            lane.witness.mark(&format!("record of {} deleted", lane.project));
            lane.ctx.delete_record(&lane.project);
        }
        let (p, ci) = lane.gitlab();
        lane.actor(&p, true, false);
        let env = lane.acquire(&p, &ci, &["--ttl", "10s", "--no-wait"], &[0]);
        lane.step(&p, "work", &[0], lane.work(&ci, "2", &env, &p, &["--writes", "2", "--gap", "20"]));
        let mut release = lane.tool(&ci, "3", &env, None);
        release.arg("release");
        lane.step(&p, "release", &[0], release);
    };
    one(false);
    one(false);
    one(true);
    // A job-scoped `run` after another deletion.
    lane.witness.mark(&format!("record of {} deleted", lane.project));
    lane.ctx.delete_record(&lane.project);
    let (p, ci) = lane.gitlab();
    let name = format!("{p}/job-5");
    lane.actor(&name, false, false);
    let mut run = lane.tool(&ci, "5", &Vec::new(), None);
    run.args(lane.run_args(&name, &["--writes", "2", "--gap", "20"]));
    lane.step(&name, "run", &[0], run);
    one(false);
}

/// A scenario by name.
pub type ScenarioFn = fn(&Lane);

pub const ALL: &[(&str, ScenarioFn)] = &[
    ("pipelines", pipelines),
    ("parallel-jobs", parallel_jobs),
    ("long-stages", long_stages),
    ("long-stages-renewed", long_stages_renewed),
    ("trap-term", trap_term),
    ("waiters", waiters),
    ("tombstones", tombstones),
];

/// The outcome of one test: every scenario's report, and the text for the reader.
pub struct Outcome {
    pub reports: Vec<(String, Report)>,
    pub text: String,
}

impl Outcome {
    pub fn violations(&self) -> Vec<String> {
        self.reports
            .iter()
            .flat_map(|(n, r)| r.violations.iter().map(move |v| format!("[{n}] {v}")))
            .collect()
    }
}

/// Runs `scenarios` at once on one store, each on its own lock and witness; judges each.
/// `PIPELINE_LOCK_SAFETY_SCENARIOS=trap-term,waiters` runs only those (to look at one closely).
pub fn run(kind: Backend, broken: Option<&'static str>, scenarios: &[(&'static str, ScenarioFn)]) -> Outcome {
    let started = Instant::now();
    let only = std::env::var("PIPELINE_LOCK_SAFETY_SCENARIOS").unwrap_or_default();
    let scenarios: Vec<(&'static str, ScenarioFn)> = scenarios
        .iter()
        .filter(|(n, _)| only.is_empty() || only.split(',').any(|o| o.trim() == *n))
        .copied()
        .collect();
    let scenarios = scenarios.as_slice();
    let ctx = Ctx::start(kind, broken);
    let lanes: Vec<Lane> = scenarios.iter().map(|(n, _)| Lane::new(&ctx, n)).collect();
    let mut times = BTreeMap::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = scenarios
            .iter()
            .zip(&lanes)
            .map(|((n, f), lane)| {
                (
                    *n,
                    s.spawn(move || {
                        let t = Instant::now();
                        // The long run repeats every scenario on the same lock and witness.
                        for _ in 0..if lane.ctx.long { 3 } else { 1 } {
                            f(lane);
                        }
                        t.elapsed()
                    }),
                )
            })
            .collect();
        for (n, h) in handles {
            match h.join() {
                Ok(t) => {
                    times.insert(n, t);
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "== CI-shaped safety run on {}{} ({:.1} s; files {})",
        kind.name(),
        broken.map(|b| format!(", NEGATIVE CONTROL {b}")).unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        ctx.dir.display()
    );
    let mut reports = Vec::new();
    for lane in &lanes {
        for (label, sc) in lane.scenarios() {
            let r = ci_checker::check(&sc);
            let stats: Vec<String> = r.stats.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let took = times.get(lane.name).map(Duration::as_secs_f64).unwrap_or_default();
            let _ = writeln!(text, "-- {label} ({took:.1} s): {}", stats.join(", "));
            for a in &sc.actors {
                let steps: Vec<String> = a
                    .steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} -> {}",
                            s.what,
                            s.code.map(|c| c.to_string()).unwrap_or_else(|| format!("signal {:?}", s.signal))
                        )
                    })
                    .collect();
                let _ = writeln!(text, "   {}: {}", a.name, steps.join("; "));
            }
            for n in &r.notes {
                let _ = writeln!(text, "   note: {n}");
            }
            for v in &r.violations {
                let _ = writeln!(text, "   VIOLATION: {v}");
            }
            let log: Vec<String> = sc.events.iter().map(|e| format!("{e:?}")).collect();
            std::fs::write(ctx.dir.join(format!("witness-{}.log", label.replace('/', "-"))), log.join("\n")).unwrap();
            reports.push((label, r));
        }
    }
    let _ = std::fs::remove_file(&ctx.bin);
    std::fs::write(ctx.dir.join("report.txt"), &text).unwrap();
    println!("{text}");
    Outcome { reports, text }
}
