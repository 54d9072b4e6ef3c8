//! The queue and early takeover (DESIGN "Queue and early takeover") on every store, with the
//! real binary: arrival order under fifo, ordinal order under newest, dead waiters pruned,
//! --supersede, CI-API takeover against a local server that answers like GitLab's and
//! GitHub's, and waiter traffic that never makes a holder's renewal fail.

mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr, wait_until};

fn queued(e: &Env, lock: &str) -> Vec<String> {
    let r = e.record(lock);
    r["Waiters"]
        .as_object()
        .map(|m| m.values().map(|w| w["Owner"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

/// Owners of the grants in History, oldest first.
fn granted(e: &Env, lock: &str) -> Vec<String> {
    let r = e.record(lock);
    r["History"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ev| ev["Event"] == "acquired" || ev["Event"] == "taken-over")
        .map(|ev| ev["Owner"].as_str().unwrap().to_string())
        .collect()
}

fn still_running(c: &mut Child) -> bool {
    c.try_wait().unwrap().is_none()
}

fn finish(c: Child) -> std::process::Output {
    c.wait_with_output().unwrap()
}

/// Starts waiters one after the other, each once the previous one is in the queue, releases
/// the holder, and returns the order in which they got the lock.
fn handoff_order(b: Backend, name: &str, extra: &[&str], ordinals: &[u64]) -> Option<Vec<String>> {
    let e = Env::try_new(b, name)?;
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let mut children = Vec::new();
    for (i, n) in ordinals.iter().enumerate() {
        let ordinal = n.to_string();
        let mut args = vec!["run", "--retry-interval", "200ms", "--ordinal", &ordinal];
        args.extend(extra);
        args.extend(["--", "sleep", "0.3"]);
        children.push(e.spawn(&format!("w{n}"), &lock, &args));
        wait_until(&format!("waiter w{n} in the queue"), Duration::from_secs(20), || {
            queued(&e, &lock).len() == i + 1
        });
    }
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    for c in children {
        assert_code(&finish(c), 0);
    }
    assert!(queued(&e, &lock).is_empty(), "every waiter left the queue: {}", e.record(&lock));
    Some(granted(&e, &lock).into_iter().filter(|o| o != "holder").collect())
}

fn fifo_grants_in_arrival_order(b: Backend) {
    let Some(order) = handoff_order(b, "fifo", &[], &[3, 1, 5, 2, 4]) else {
        return;
    };
    assert_eq!(order, ["w3", "w1", "w5", "w2", "w4"]);
}

fn newest_grants_in_ordinal_order(b: Backend) {
    let Some(order) = handoff_order(b, "newest", &["--queue", "newest"], &[3, 1, 5, 2, 4]) else {
        return;
    };
    assert_eq!(order, ["w5", "w4", "w3", "w2", "w1"]);
}

/// A free lock goes to the head even when a later waiter sees it free first: the later one
/// is refused by the decision, not by luck.
fn a_free_lock_waits_for_the_head(b: Backend) {
    let Some(e) = Env::try_new(b, "head") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    // The head polls slowly; the newcomer would win any race to a free record.
    let head = e.spawn("head", &lock, &["acquire", "--retry-interval", "6s", "--output", "json"]);
    wait_until("the head in the queue", Duration::from_secs(20), || queued(&e, &lock).len() == 1);
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    let (code, v) = e.json("newcomer", &lock, &["acquire", "--no-wait"]);
    assert_eq!(code, 73, "{v}");
    let out = e.run("newcomer", &lock, &["acquire", "--no-wait"]);
    assert!(stderr(&out).contains("is free but 1 waiter(s) are ahead"), "{}", stderr(&out));
    let out = finish(head);
    assert_code(&out, 0);
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((g["owner"].as_str(), g["how"]["kind"].as_str()), (Some("head"), Some("acquired")));
    assert!(g["waited_ms"].as_u64().unwrap() > 0 && g["requests"].as_u64().unwrap() > 1, "{g}");
}

fn a_killed_waiter_stops_blocking_after_the_prune_window(b: Backend) {
    let Some(e) = Env::try_new(b, "killed") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let fast = ["acquire", "--retry-interval", "200ms", "--prune-floor", "2s", "--output", "json"];
    let mut dead = e.spawn("dead", &lock, &fast);
    wait_until("the first waiter queued", Duration::from_secs(20), || queued(&e, &lock).len() == 1);
    let next = e.spawn("next", &lock, &fast);
    wait_until("the second waiter queued", Duration::from_secs(20), || queued(&e, &lock).len() == 2);
    dead.kill().unwrap();
    dead.wait().unwrap();
    let last_seen = e.record(&lock)["Waiters"]
        .as_object()
        .unwrap()
        .values()
        .find(|w| w["Owner"] == "dead")
        .unwrap()["SeenAt"]
        .as_i64()
        .unwrap();
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    let start = Instant::now();
    let out = finish(next);
    assert_code(&out, 0);
    assert!(start.elapsed() < Duration::from_secs(15), "{:?}", start.elapsed());
    let r = e.record(&lock);
    assert_eq!(r["Owner"], "next");
    // Not before the dead entry had gone unseen for the window (less a second of clock slack).
    assert!(
        r["AcquiredAt"].as_i64().unwrap() >= last_seen + 1000,
        "granted {} ms after the dead waiter was last seen",
        r["AcquiredAt"].as_i64().unwrap() - last_seen
    );
    // The grant removed the dead entry with its own.
    assert!(r.get("Waiters").is_none_or(|w| w.as_object().unwrap().is_empty()), "{r}");
}

fn supersede_skips_the_older_pipeline(b: Backend) {
    let Some(e) = Env::try_new(b, "supersede") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire", "--ordinal", "1"]), 0);
    let args = |n: &'static str| ["acquire", "--supersede", "--ordinal", n, "--retry-interval", "200ms", "--output", "json"];
    let old = e.spawn("old", &lock, &args("5"));
    wait_until("the old waiter queued", Duration::from_secs(20), || queued(&e, &lock).len() == 1);
    let mut new = e.spawn("new", &lock, &args("7"));
    let out = finish(old);
    assert_code(&out, 74);
    assert!(stderr(&out).contains("new (pipeline 7) waits for it"), "{}", stderr(&out));
    wait_until("the old waiter gone from the queue", Duration::from_secs(10), || {
        queued(&e, &lock) == ["new"]
    });
    assert!(still_running(&mut new));
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    assert_code(&finish(new), 0);
    // A newer holder supersedes at once.
    let out = e.run("older", &lock, &["acquire", "--supersede", "--ordinal", "6"]);
    assert_code(&out, 74);
    assert!(stderr(&out).contains("holds it"), "{}", stderr(&out));
}

/// A local server answering like a CI API: `routes` maps a path to (status, body). Records
/// each request's path and headers.
struct FakeCi {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeCi {
    fn start(routes: Vec<(String, u16, String)>) -> FakeCi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(200) {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(head.clone());
                let (status, body) = routes
                    .iter()
                    .find(|(p, _, _)| p.to_ascii_lowercase() == path)
                    .map(|(_, s, b)| (*s, b.clone()))
                    .unwrap_or((404, "{\"message\":\"404 Not found\"}".into()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeCi { port, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

const PIPELINE_PATH: &str = "/api/v4/projects/group%2Fapp/pipelines/100";
const HOLDER: &str = "gitlab:127.0.0.1/group/app/pipelines/100";

/// A waiter in GitLab CI on the host 127.0.0.1 whose API is the fake server.
fn gitlab_waiter(e: &Env, ci: &FakeCi, lock: &str, args: &[&str]) -> Command {
    let mut c = e.cmd();
    c.env("GITLAB_CI", "true")
        .env("CI_SERVER_HOST", "127.0.0.1")
        .env("CI_SERVER_URL", format!("http://127.0.0.1:{}", ci.port))
        .env("CI_API_V4_URL", format!("http://127.0.0.1:{}/api/v4", ci.port))
        .env("CI_PROJECT_PATH", "group/app")
        .env("CI_PIPELINE_ID", "200")
        .env("CI_PIPELINE_IID", "20")
        .env("CI_JOB_ID", "2001")
        .env("CI_JOB_TOKEN", "job-secret")
        .args(["--lock", lock])
        .args(args);
    c
}

fn ended_pipeline_is_taken_over_at_once(b: Backend) {
    let Some(e) = Env::try_new(b, "ci-ended") else { return };
    let lock = e.lock("l");
    let ci = FakeCi::start(vec![(PIPELINE_PATH.into(), 200, r#"{"id":100,"iid":10,"status":"canceled"}"#.into())]);
    assert_code(&e.run(HOLDER, &lock, &["acquire", "--ttl", "1h"]), 0);
    let start = Instant::now();
    let out = gitlab_waiter(&e, &ci, &lock, &["acquire", "--wait", "30s", "--output", "json"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["how"]["kind"], "took-over", "{g}");
    assert!(g["how"]["why"].as_str().unwrap().contains("canceled"), "{g}");
    let r = e.record(&lock);
    let last = r["History"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["Event"], "taken-over");
    assert!(last["Why"].as_str().unwrap().contains("pipeline has ended"), "{last}");
    let requests = ci.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].contains("job-token: job-secret"), "{}", requests[0]);
}

/// In a full pool, the shared hold of a pipeline that has ended is taken over at once, and
/// alone: the live holder beside it keeps its slot, byte for byte.
fn ended_pipelines_shared_hold_is_taken_over_alone(b: Backend) {
    let Some(e) = Env::try_new(b, "ci-ended-shared") else { return };
    let lock = e.lock("l");
    let ci = FakeCi::start(vec![(PIPELINE_PATH.into(), 200, r#"{"id":100,"iid":10,"status":"canceled"}"#.into())]);
    let pool = ["--slots", "2", "--shared", "--ttl", "1h"];
    assert_code(&e.run(HOLDER, &lock, &[&["acquire"][..], &pool].concat()), 0);
    assert_code(&e.run("live-holder", &lock, &[&["acquire"][..], &pool].concat()), 0);
    let live_before = e.record(&lock)["Shared"]["2"].clone();
    let start = Instant::now();
    let out = gitlab_waiter(
        &e,
        &ci,
        &lock,
        &["acquire", "--slots", "2", "--shared", "--wait", "30s", "--output", "json"],
    )
    .output()
    .unwrap();
    assert_code(&out, 0);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((g["how"]["kind"].as_str(), g["slot"].as_u64()), (Some("took-over"), Some(1)), "{g}");
    assert!(g["how"]["why"].as_str().unwrap().contains("canceled"), "{g}");
    let r = e.record(&lock);
    assert_eq!(r["Shared"]["2"], live_before, "the live holder's hold is untouched");
    // Asked about the ended pipeline only: the live holder is no pipeline of this server.
    let requests = ci.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
}

/// A grant that came after a wait records how long it waited; one without a wait does not.
fn a_grant_after_a_wait_records_the_wait_in_history(b: Backend) {
    let Some(e) = Env::try_new(b, "waited") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("first", &lock, &["acquire"]), 0);
    let waiter = e.spawn("second", &lock, &["acquire", "--wait", "30s", "--retry-interval", "200ms"]);
    wait_until("second queued", Duration::from_secs(10), || {
        e.record(&lock)["Waiters"].as_object().is_some_and(|w| !w.is_empty())
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert_code(&e.run("first", &lock, &["release"]), 0);
    assert_code(&waiter.wait_with_output().unwrap(), 0);
    let history = e.record(&lock)["History"].as_array().unwrap().clone();
    let first = &history[history.len() - 3];
    let second = history.last().unwrap();
    assert_eq!((first["Event"].as_str(), first.get("Waited")), (Some("acquired"), None), "{history:?}");
    assert_eq!(second["Owner"], "second", "{history:?}");
    assert!(second["Waited"].as_u64().is_some_and(|w| w >= 1000), "{history:?}");
    let status = e.run("observer", &lock, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("second fence") && text.contains("after waiting 1s"), "{text}");
}

fn running_pipeline_is_not_taken(b: Backend) {
    let Some(e) = Env::try_new(b, "ci-running") else { return };
    let lock = e.lock("l");
    let ci = FakeCi::start(vec![(PIPELINE_PATH.into(), 200, r#"{"id":100,"status":"running"}"#.into())]);
    assert_code(&e.run(HOLDER, &lock, &["acquire", "--ttl", "1h"]), 0);
    let out = gitlab_waiter(&e, &ci, &lock, &["acquire", "--wait", "3s", "--retry-interval", "200ms"])
        .output()
        .unwrap();
    assert_code(&out, 75);
    assert_eq!(e.record(&lock)["Owner"], HOLDER);
    assert!(!ci.requests().is_empty());
}

fn api_errors_take_nothing(b: Backend) {
    let Some(e) = Env::try_new(b, "ci-error") else { return };
    let lock = e.lock("l");
    assert_code(&e.run(HOLDER, &lock, &["acquire", "--ttl", "1h"]), 0);
    for (status, body) in [
        (500, "{\"status\":\"canceled\"}"),
        (200, "<html>canceled</html>"),
        (200, "{\"id\":100}"),
        (403, "{\"message\":\"403 Forbidden\"}"),
    ] {
        let ci = FakeCi::start(vec![(PIPELINE_PATH.into(), status, body.into())]);
        let out = gitlab_waiter(&e, &ci, &lock, &["acquire", "--wait", "2s", "--retry-interval", "200ms"])
            .output()
            .unwrap();
        assert_code(&out, 75);
        assert!(stderr(&out).contains("no early takeover"), "{status} {body}: {}", stderr(&out));
        assert_eq!(e.record(&lock)["Owner"], HOLDER, "{status} {body}");
    }
}

fn holder_on_another_host_is_never_asked_about(b: Backend) {
    let Some(e) = Env::try_new(b, "ci-host") else { return };
    let lock = e.lock("l");
    let ci = FakeCi::start(vec![(
        "/api/v4/projects/group%2Fapp/pipelines/100".into(),
        200,
        r#"{"status":"canceled"}"#.into(),
    )]);
    let foreign = "gitlab:gitlab.other.example/group/app/pipelines/100";
    assert_code(&e.run(foreign, &lock, &["acquire", "--ttl", "1h"]), 0);
    let out = gitlab_waiter(&e, &ci, &lock, &["acquire", "--wait", "2s", "--retry-interval", "200ms"])
        .output()
        .unwrap();
    assert_code(&out, 75);
    assert_eq!(e.record(&lock)["Owner"], foreign);
    assert!(ci.requests().is_empty(), "the token went out: {:?}", ci.requests());
    // --no-ci-api: not even our own host's holders are asked about.
    let Some(e2) = Env::try_new(b, "ci-off") else { return };
    let lock2 = e2.lock("l");
    assert_code(&e2.run(HOLDER, &lock2, &["acquire", "--ttl", "1h"]), 0);
    let out = gitlab_waiter(&e2, &ci, &lock2, &["acquire", "--no-ci-api", "--wait", "1s"])
        .output()
        .unwrap();
    assert_code(&out, 75);
    assert!(ci.requests().is_empty());
}

/// Waiters refresh SeenAt and prune each other as fast as they can while the holder renews
/// every 200 ms on a 1 s lease: no renewal may fail, nobody may take the lock.
fn waiter_traffic_never_fails_a_renewal(b: Backend) {
    let Some(e) = Env::try_new(b, "traffic") else { return };
    let lock = e.lock("l");
    let holder = e.spawn(
        "holder",
        &lock,
        &[
            "run",
            // Long enough that a loaded machine's slow renewal is no loss (a failed renewal
            // still shows: its "failed, retrying" line fails the test below).
            "--ttl",
            "3s",
            "--heartbeat",
            "200ms",
            "--clock-margin",
            "200ms",
            "--kill-grace",
            "200ms",
            "--",
            "sleep",
            "6",
        ],
    );
    wait_until("the grant", Duration::from_secs(10), || e.record(&lock).get("Owner").is_some());
    let fence = e.record(&lock)["Fence"].clone();
    let busy = ["acquire", "--retry-interval", "100ms", "--prune-floor", "600ms", "--wait", "2s"];
    for round in 0..2 {
        let waiters: Vec<_> = (0..4).map(|i| e.spawn(&format!("w{round}{i}"), &lock, &busy)).collect();
        for w in waiters {
            assert_code(&finish(w), 75);
        }
    }
    let out = finish(holder);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(!err.contains("failed") && !err.contains("lost"), "{err}");
    let r = e.record(&lock);
    assert_eq!(r["Fence"], fence);
    assert!(r["History"].as_array().unwrap().iter().all(|ev| ev["Event"] != "taken-over"), "{r}");
}

/// `status` lists the queue in order, with each waiter's URL and wait, in text and JSON.
fn status_shows_the_queue(b: Backend) {
    let Some(e) = Env::try_new(b, "status") else { return };
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let a = e.spawn("first", &lock, &["acquire", "--ordinal", "1", "--wait", "20s"]);
    wait_until("first queued", Duration::from_secs(20), || queued(&e, &lock).len() == 1);
    let b2 = e.spawn("second", &lock, &["acquire", "--ordinal", "2", "--wait", "20s", "-v"]);
    wait_until("second queued", Duration::from_secs(20), || queued(&e, &lock).len() == 2);
    let (code, v) = e.json("observer", &lock, &["status"]);
    assert_eq!(code, 0);
    let owners: Vec<_> = v["queue"].as_array().unwrap().iter().map(|w| w["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, ["first", "second"]);
    assert_eq!(v["queue"][0]["position"], 1);
    assert_eq!(v["queue"][1]["live"], true);
    let (_, newest) = e.json("observer", &lock, &["status", "--queue", "newest"]);
    assert_eq!(newest["queue"][0]["owner"], "second");
    let text = String::from_utf8_lossy(&e.run("observer", &lock, &["status"]).stdout).into_owned();
    assert!(
        text.contains("1. first pipeline 1 waiting") && text.contains("2. second pipeline 2 waiting"),
        "{text}"
    );
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    assert_code(&finish(a), 0);
    assert_code(&e.run("first", &lock, &["release"]), 0);
    let out = finish(b2);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("queue (fifo): position 2 of 2, ahead: first"), "{err}");
}

on_every_store!(
    fifo_grants_in_arrival_order,
    newest_grants_in_ordinal_order,
    a_free_lock_waits_for_the_head,
    a_killed_waiter_stops_blocking_after_the_prune_window,
    supersede_skips_the_older_pipeline,
    ended_pipeline_is_taken_over_at_once,
    ended_pipelines_shared_hold_is_taken_over_alone,
    a_grant_after_a_wait_records_the_wait_in_history,
    running_pipeline_is_not_taken,
    api_errors_take_nothing,
    holder_on_another_host_is_never_asked_about,
    waiter_traffic_never_fails_a_renewal,
    status_shows_the_queue,
);

/// GitHub's workflow-runs API: a completed run is taken over, with the bearer token sent to
/// our own API host only.
#[test]
fn github_completed_run_is_taken_over() {
    let Some(e) = Env::try_new(Backend::File, "ci-github") else { return };
    let lock = e.lock("l");
    let ci = FakeCi::start(vec![(
        "/repos/org/app/actions/runs/555".into(),
        200,
        r#"{"id":555,"status":"completed","conclusion":"cancelled"}"#.into(),
    )]);
    assert_code(&e.run("github:127.0.0.1/org/app/runs/555", &lock, &["acquire", "--ttl", "1h"]), 0);
    let out = e
        .cmd()
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_SERVER_URL", "http://127.0.0.1")
        .env("GITHUB_API_URL", format!("http://127.0.0.1:{}", ci.port))
        .env("GITHUB_REPOSITORY", "org/app")
        .env("GITHUB_RUN_ID", "556")
        .env("GITHUB_RUN_NUMBER", "9")
        .env("GITHUB_TOKEN", "gh-secret")
        .args(["--lock", &lock, "acquire", "--wait", "20s", "--output", "json"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(g["how"]["why"].as_str().unwrap().contains("completed, cancelled"), "{g}");
    assert!(ci.requests()[0].contains("authorization: bearer gh-secret"), "{:?}", ci.requests());
}
