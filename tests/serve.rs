//! `pipeline-lock serve` on every store: Tracker's REST API against its documented requests
//! and responses (tests/fixtures/tracker), the native JSON API with a real wait in the queue,
//! auth, and the CLI seeing what the service wrote. The real binary, a real HTTP client.

#[path = "serve/server.rs"]
mod server;
mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use server::{Opts, Server, fixture, same_shape};
use support::{Backend, Env};

fn tracker_api_answers_as_documented(backend: Backend) {
    let Some(env) = Env::try_new(backend, "serve-tracker") else { return };
    let srv = Server::start(&env);
    let service = env.lock("production-deployment");
    let mut req = fixture("create-request.json");
    req["service"] = service.clone().into();

    let (code, created) = srv.post("/api/v1alpha1/lock", req.clone());
    assert_eq!(code, 201, "{created}");
    same_shape("create", &fixture("create-response.json"), &created);
    assert_eq!(created["service"], service.as_str());
    assert_eq!(created["who"], "ci-pipeline-123");
    let id = created["id"].as_str().unwrap().to_string();

    // Held: another pipeline gets the 409 naming the grant that holds it; so does the same
    // `who` (Tracker's locks do not re-enter).
    for who in ["other-pipeline", "ci-pipeline-123"] {
        let (code, conflict) = srv.post("/api/v1alpha1/lock", json!({"service": service, "who": who}));
        assert_eq!(code, 409, "{conflict}");
        same_shape("conflict", &fixture("conflict-response.json"), &conflict);
        assert_eq!(conflict["error"], "lock already exists");
        assert_eq!(conflict["existingLock"]["id"], id.as_str());
        assert_eq!(conflict["existingLock"]["who"], "ci-pipeline-123");
    }

    let (code, got) = srv.get(&format!("/api/v1alpha1/lock/{id}"));
    assert_eq!(code, 200, "{got}");
    same_shape("get", &fixture("get-response.json"), &got);
    assert_eq!(got, created);

    let (code, list) = srv.get("/api/v1alpha1/locks/list?per_page=1000&page=1");
    assert_eq!(code, 200, "{list}");
    same_shape("list", &fixture("list-response.json"), &list);
    assert_eq!(list["perPage"], 1000);
    assert!(list["locks"].as_array().unwrap().iter().any(|l| l["id"] == id.as_str()), "{list}");

    // The CLI sees the grant the service made.
    let record = env.record(&service);
    assert_eq!(record["Owner"], "ci-pipeline-123");

    let (code, unlocked) = srv.get(&format!("/api/v1alpha1/unlock/{id}"));
    assert_eq!(code, 200, "{unlocked}");
    same_shape("unlock", &fixture("unlock-response.json"), &unlocked);
    assert_eq!(unlocked["success"], true);
    assert!(env.record(&service).get("Owner").is_none(), "released, the record is free");
    assert_eq!(srv.get(&format!("/api/v1alpha1/lock/{id}")).0, 404);
    assert_eq!(srv.get(&format!("/api/v1alpha1/unlock/{id}")).0, 404);

    // A later grant of the same lock: the old id neither finds nor releases it.
    let (code, next) = srv.post("/api/v1alpha1/lock", json!({"service": service, "who": "next"}));
    assert_eq!(code, 201, "{next}");
    assert_ne!(next["id"], id.as_str());
    assert_eq!(srv.get(&format!("/api/v1alpha1/unlock/{id}")).0, 404);
    assert_eq!(env.record(&service)["Owner"], "next", "an old id released a later grant");
}

fn list_pages_count_from_one_with_the_total(backend: Backend) {
    let Some(env) = Env::try_new(backend, "serve-pages") else { return };
    let srv = Server::start(&env);
    let names: Vec<String> = (0..3).map(|i| env.lock(&format!("svc-{i}"))).collect();
    for n in &names {
        assert_eq!(srv.post("/api/v1alpha1/lock", json!({"service": n, "who": "w"})).0, 201);
    }
    let (_, all) = srv.get("/api/v1alpha1/locks/list?per_page=1000");
    let ours = |v: &serde_json::Value| -> Vec<String> {
        v["locks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["service"].as_str().filter(|s| names.iter().any(|n| n == s)).map(String::from))
            .collect()
    };
    assert_eq!(ours(&all), names, "{all}");
    if matches!(backend, Backend::DynamoLocal | Backend::MotoDynamo) {
        // The table is shared with the tests running beside this one: offset pages over a
        // set that grows meanwhile may skip or repeat, in Tracker's API as in any other.
        let (_, p) = srv.get("/api/v1alpha1/locks/list?per_page=1&page=2");
        assert_eq!((p["page"].as_u64(), p["perPage"].as_u64()), (Some(2), Some(1)), "{p}");
        assert!(p["total"].as_u64().unwrap() >= 3, "{p}");
        return;
    }
    let total = all["total"].as_u64().unwrap();
    let mut paged = Vec::new();
    for page in 1..=total {
        let (code, p) = srv.get(&format!("/api/v1alpha1/locks/list?per_page=1&page={page}"));
        assert_eq!(code, 200);
        assert_eq!(p["total"], total);
        assert_eq!(p["page"], page);
        assert_eq!(p["locks"].as_array().unwrap().len(), 1);
        paged.extend(ours(&p));
    }
    assert_eq!(paged, names);
    assert_eq!(srv.get("/api/v1alpha1/locks/list?per_page=0").0, 400);
}

fn native_api_waits_in_the_queue_and_hands_over(backend: Backend) {
    let Some(env) = Env::try_new(backend, "serve-native") else { return };
    let srv = Server::start(&env);
    let lock = env.lock("prod");
    let (code, a) = srv.post(
        "/api/v1/acquire",
        json!({"lock": lock, "owner": "pipeline-a", "url": "https://ci.example/p/1"}),
    );
    assert_eq!(code, 200, "{a}");
    let fence_a = a["fence"].as_u64().unwrap();

    // Without a wait, held is a 409 carrying exit 73's meaning.
    let (code, held) = srv.post("/api/v1/acquire", json!({"lock": lock, "owner": "pipeline-b"}));
    assert_eq!(
        (code, held["code"].as_str(), held["exit"].as_u64()),
        (409, Some("held"), Some(73)),
        "{held}"
    );

    // B waits (bounded) in the queue while A holds it.
    let url = srv.url.clone();
    let lock_b = lock.clone();
    let waiter = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let r = http
            .post(format!("{url}/api/v1/acquire"))
            .header("Authorization", format!("Bearer {}", server::TOKEN))
            .json(&json!({"lock": lock_b, "owner": "pipeline-b", "wait": "40s"}))
            .send()
            .unwrap();
        server::answer(r)
    });
    let path = format!("/api/v1/locks/{lock}");
    support::wait_until("pipeline-b in the queue", Duration::from_secs(20), || {
        srv.get(&path).1["queue"]
            .as_array()
            .is_some_and(|q| q.iter().any(|w| w["owner"] == "pipeline-b"))
    });
    let (code, status) = srv.get(&path);
    assert_eq!(code, 200);
    assert_eq!(status["record"]["Owner"], "pipeline-a");
    assert_eq!(status["record"]["Holder"]["Url"], "https://ci.example/p/1");

    // Renew by token, then release: B is granted, with a higher fence.
    let (code, renewed) = srv.post(
        "/api/v1/renew",
        json!({"lock": lock, "owner": "pipeline-a", "token": a["token"], "ttl": "2h"}),
    );
    assert_eq!(code, 200, "{renewed}");
    assert_eq!(renewed["fence"], fence_a);
    let (code, released) = srv.post("/api/v1/release", json!({"lock": lock, "owner": "pipeline-a", "token": a["token"]}));
    assert_eq!(code, 200, "{released}");
    assert_eq!(released["release"]["result"], "released");
    let (code, b) = waiter.join().unwrap();
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["owner"], "pipeline-b");
    assert!(b["fence"].as_u64().unwrap() > fence_a);

    // A's grant is gone: renewing it is exit 76's meaning, 410.
    let (code, lost) = srv.post("/api/v1/renew", json!({"lock": lock, "owner": "pipeline-a", "token": a["token"]}));
    assert_eq!((code, lost["code"].as_str()), (410, Some("lease_lost")), "{lost}");

    // Break-glass needs a reason, and is in History with it.
    assert_eq!(srv.post("/api/v1/release", json!({"lock": lock, "owner": "ops", "force": true})).0, 400);
    let (code, forced) = srv.post(
        "/api/v1/release",
        json!({"lock": lock, "owner": "ops", "force": true, "reason": "runner died"}),
    );
    assert_eq!(code, 200, "{forced}");
    let record = env.record(&lock);
    assert!(record.get("Owner").is_none(), "{record}");
    let last = record["History"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["By"], "ops", "{record}");
    assert!(last["Why"].as_str().is_some_and(|w| w.contains("runner died")), "{record}");
}

fn a_missing_wrong_or_malformed_token_is_401_and_writes_nothing(backend: Backend) {
    let Some(env) = Env::try_new(backend, "serve-auth") else { return };
    let srv = Server::start(&env);
    let lock = env.lock("guarded");
    let bodies = [
        ("/api/v1alpha1/lock", json!({"service": lock, "who": "x"})),
        ("/api/v1/acquire", json!({"lock": lock, "owner": "x"})),
    ];
    let bad: [Option<&str>; 5] = [
        None,
        Some("Bearer wrong-token-0123456789abcdef"),
        Some(server::TOKEN),
        Some("Basic dGVzdDp0ZXN0"),
        Some("Bearer "),
    ];
    for (path, body) in &bodies {
        for header in bad {
            let mut r = srv.anon(Method::POST, path).json(body);
            if let Some(h) = header {
                r = r.header("Authorization", h);
            }
            let (code, err) = server::answer(r.send().unwrap());
            assert_eq!((code, err["code"].as_str()), (401, Some("unauthorized")), "{path} with {header:?}: {err}");
        }
    }
    // Reads need it too without --public-read.
    assert_eq!(server::answer(srv.anon(Method::GET, "/api/v1alpha1/locks/list").send().unwrap()).0, 401);
    assert_eq!(
        server::answer(srv.anon(Method::GET, &format!("/api/v1/locks/{lock}")).send().unwrap()).0,
        401
    );
    let (code, status) = env.json("observer", &lock, &["status"]);
    assert_eq!((code, status["state"].as_str()), (0, Some("absent")), "a refused request wrote: {status}");
    assert!(!srv.log.lock().unwrap().contains("wrong-token"), "a token reached the log");
}

on_every_store!(
    tracker_api_answers_as_documented,
    list_pages_count_from_one_with_the_total,
    native_api_waits_in_the_queue_and_hands_over,
    a_missing_wrong_or_malformed_token_is_401_and_writes_nothing,
);

#[test]
fn public_read_opens_reads_and_never_writes() {
    let env = Env::new(Backend::File, "serve-public");
    let srv = Server::start_with(
        &env,
        Opts {
            public_read: true,
            ..Opts::default()
        },
    );
    let lock = env.lock("seen");
    assert_eq!(server::answer(srv.anon(Method::GET, "/api/v1alpha1/locks/list").send().unwrap()).0, 200);
    assert_eq!(
        server::answer(srv.anon(Method::GET, &format!("/api/v1/locks/{lock}")).send().unwrap()).0,
        200
    );
    let r = srv.anon(Method::POST, "/api/v1/acquire").json(&json!({"lock": lock, "owner": "x"}));
    assert_eq!(server::answer(r.send().unwrap()).0, 401);
    // Without a token file the service is read-only: every write is refused.
    let ro = Server::start_with(
        &env,
        Opts {
            public_read: true,
            no_token: true,
            ..Opts::default()
        },
    );
    let (code, err) = ro.post("/api/v1/acquire", json!({"lock": lock, "owner": "x"}));
    assert_eq!((code, err["code"].as_str()), (403, Some("read_only")), "{err}");
    assert_eq!(env.json("observer", &lock, &["status"]).1["state"], "absent");
}

#[test]
fn sigterm_stops_the_service_with_exit_0_and_a_waiting_acquire_leaves_the_queue() {
    let env = Env::new(Backend::File, "serve-stop");
    let mut srv = Server::start(&env);
    let lock = env.lock("busy");
    assert_eq!(srv.post("/api/v1/acquire", json!({"lock": lock, "owner": "holder"})).0, 200);
    let (url, lock2) = (srv.url.clone(), lock.clone());
    let waiter = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::new();
        let r = http
            .post(format!("{url}/api/v1/acquire"))
            .header("Authorization", format!("Bearer {}", server::TOKEN))
            .json(&json!({"lock": lock2, "owner": "waiter", "wait": "60s"}))
            .send()
            .unwrap();
        server::answer(r)
    });
    support::wait_until("the waiter in the queue", Duration::from_secs(20), || {
        env.record(&lock)["Waiters"].as_object().is_some_and(|w| !w.is_empty())
    });
    let start = std::time::Instant::now();
    assert_eq!(srv.stop(), Some(0));
    assert!(start.elapsed() < Duration::from_secs(10), "shutdown waited for the acquire's whole wait");
    let (code, err) = waiter.join().unwrap();
    assert_eq!((code, err["code"].as_str()), (503, Some("interrupted")), "{err}");
    assert!(env.record(&lock).get("Waiters").is_none(), "the waiter's queue entry stayed behind");
}

#[test]
fn trackers_deploy_script_runs_unchanged_but_for_url_and_token() {
    let env = Env::new(Backend::File, "serve-deploy-sh");
    if std::process::Command::new("jq").arg("--version").output().is_err() {
        return support::skip("jq is not installed (Tracker's scripts need it)");
    }
    let srv = Server::start(&env);
    let lock = env.lock("production-deployment");
    let script = format!("{}/tests/tracker/deploy.sh", env!("CARGO_MANIFEST_DIR"));
    let run = |deploy: &str| {
        std::process::Command::new("bash")
            .arg(&script)
            .env("TRACKER_URL", &srv.url)
            .env("TRACKER_TOKEN", server::TOKEN)
            .env("LOCK_SERVICE", &lock)
            .env("CI_PIPELINE_ID", "4711")
            .env("DEPLOY_CMD", deploy)
            .output()
            .unwrap()
    };
    // While a deploy holds the lock, a second one (run as its deploy step) is turned away.
    let out = run(&format!("env CI_PIPELINE_ID=4712 bash {script}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Deployment already in progress"), "{text}");
    assert!(text.contains("Lock released successfully"), "{text}");
    // Released at the end: the next deploy goes through.
    let again = run("true");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stdout));
    assert!(env.record(&lock).get("Owner").is_none());
}

#[test]
fn a_client_that_goes_away_mid_wait_leaves_the_queue_and_gets_nothing() {
    let env = Env::new(Backend::File, "serve-gone");
    let srv = Server::start(&env);
    let lock = env.lock("busy");
    let (_, a) = srv.post("/api/v1/acquire", json!({"lock": lock, "owner": "holder"}));
    let impatient = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let gave_up = impatient
        .post(format!("{}/api/v1/acquire", srv.url))
        .header("Authorization", format!("Bearer {}", server::TOKEN))
        .json(&json!({"lock": lock, "owner": "gone", "wait": "60s"}))
        .send();
    assert!(gave_up.is_err(), "the client was meant to time out: {gave_up:?}");
    support::wait_until("the gone client's queue entry removed", Duration::from_secs(10), || {
        env.record(&lock).get("Waiters").is_none()
    });
    let (code, _) = srv.post("/api/v1/release", json!({"lock": lock, "owner": "holder", "token": a["token"]}));
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert!(env.record(&lock).get("Owner").is_none(), "a client that went away was granted the lock");
}
