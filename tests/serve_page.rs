//! The page at `/` in a real browser: Debian's headless chromium, driven by selenium from
//! PyPI (tests/browser/page_check.py). Asserts what a person sees (holder, pipeline link,
//! fence, queue, History) on a phone-sized window, that the page follows a release without
//! a reload, and that 150 locks are paged. Screenshots are kept in target/tmp/. Skipped, with a
//! line saying so, without chromium, chromium-driver or selenium (`scripts/servers.sh`
//! install_tools installs them).

#[path = "serve/server.rs"]
mod server;
mod support;

use std::time::Duration;

use serde_json::json;
use server::{Opts, Server};
use support::{Backend, Env};

fn browser_tools() -> Option<&'static str> {
    for (tool, why) in [("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")] {
        if !std::path::Path::new(tool).exists() {
            return Some(why);
        }
    }
    let selenium = std::process::Command::new("python3").args(["-c", "import selenium"]).output();
    (!selenium.is_ok_and(|o| o.status.success())).then_some("selenium (python)")
}

#[test]
fn the_page_shows_holder_queue_and_history_and_follows_a_release() {
    if let Some(missing) = browser_tools() {
        return support::skip(&format!("{missing} is not installed"));
    }
    let env = Env::new(Backend::File, "serve-page");
    let srv = Server::start_with(
        &env,
        Opts {
            public_read: true,
            ..Opts::default()
        },
    );
    let lock = env.lock("prod");
    for i in 0..150 {
        let (code, v) = srv.post(
            "/api/v1alpha1/lock",
            json!({"service": env.lock(&format!("zz-filler-{i:03}")), "who": "filler"}),
        );
        assert_eq!(code, 201, "{v}");
    }
    let (code, a) = srv.post(
        "/api/v1/acquire",
        json!({"lock": lock, "owner": "pipeline-a", "url": "https://ci.example/group/app/-/pipelines/41"}),
    );
    assert_eq!(code, 200, "{a}");
    let (url, lock_b) = (srv.url.clone(), lock.clone());
    let waiter = std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
        let r = http
            .post(format!("{url}/api/v1/acquire"))
            .header("Authorization", format!("Bearer {}", server::TOKEN))
            .json(&json!({"lock": lock_b, "owner": "pipeline-b", "wait": "80s"}))
            .send()
            .unwrap();
        server::answer(r)
    });
    support::wait_until("pipeline-b queued", Duration::from_secs(20), || {
        env.record(&lock)["Waiters"].as_object().is_some_and(|w| !w.is_empty())
    });
    let shots = env!("CARGO_TARGET_TMPDIR");
    let script = format!("{}/tests/browser/page_check.py", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([srv.url.as_str(), server::TOKEN, lock.as_str(), a["token"].as_str().unwrap(), shots])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["holder"], "pipeline-a", "{seen}");
    assert_eq!(seen["pipeline"], "https://ci.example/group/app/-/pipelines/41", "{seen}");
    assert_eq!(seen["fence"], a["fence"].to_string(), "{seen}");
    assert!(seen["lease_left"].as_str().unwrap().contains('m'), "{seen}");
    assert_eq!(seen["queue"], json!(["pipeline-b"]), "{seen}");
    assert!(seen["timeline"][0].as_str().unwrap().contains("acquired pipeline-a"), "{seen}");
    assert_eq!(seen["cards"], 100, "the first page holds 100 locks: {seen}");
    assert_eq!(seen["next_page"], true, "{seen}");
    assert_eq!(seen["overflows"], false, "the page is wider than a phone: {seen}");
    // After the release, without a reload: B holds it, A's release and B's grant are in History.
    assert_eq!(seen["holder_after"], "pipeline-b", "{seen}");
    assert_eq!(seen["queue_after"], json!([]), "{seen}");
    assert_eq!(seen["not_reloaded"], true, "{seen}");
    assert_eq!(seen["history_open_after"], true, "the refresh closed the open History: {seen}");
    let timeline: Vec<&str> = seen["timeline_after"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(
        timeline[0].contains("acquired pipeline-b") && timeline[1].contains("released pipeline-a"),
        "{seen}"
    );
    // B's grant came after its wait in the queue, and the timeline says so.
    assert!(timeline[0].contains("after waiting"), "{seen}");
    assert_eq!(seen["second_page_cards"], 51, "{seen}");
    let (code, b) = waiter.join().unwrap();
    assert_eq!((code, b["owner"].as_str()), (200, Some("pipeline-b")), "{b}");
    assert!(std::path::Path::new(shots).join("serve-page-after-release.png").exists());
}

#[test]
fn without_public_read_the_page_holds_no_locks_until_given_the_token() {
    let env = Env::new(Backend::File, "serve-page-auth");
    let srv = Server::start(&env);
    let lock = env.lock("secret-name");
    assert_eq!(srv.post("/api/v1alpha1/lock", json!({"service": lock, "who": "w"})).0, 201);
    let page = srv.anon(reqwest::Method::GET, "/").send().unwrap().text().unwrap();
    assert!(page.contains("<form id=\"login\""), "{page:.400}");
    assert!(!page.contains(&lock), "the page shell showed a lock without the token");
    assert_eq!(srv.anon(reqwest::Method::GET, "/ui/locks").send().unwrap().status(), 401);
    let cards = srv.auth(reqwest::Method::GET, "/ui/locks").send().unwrap().text().unwrap();
    assert!(cards.contains(&lock), "{cards:.400}");
}
