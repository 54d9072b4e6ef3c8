//! The binary's edges: bad input, exit codes, CI identity, outputs, request counts.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr};

#[test]
fn bad_input_is_a_usage_error_naming_the_problem() {
    let Some(e) = Env::try_new(Backend::File, "bad-input") else { return };
    let lock = e.lock("l");
    let long = "x".repeat(1025);
    let cases: &[(&[&str], &str)] = &[
        (&["--lock", "", "acquire"], "empty"),
        (&["--lock", &long, "acquire"], "1024"),
        (&["--lock", "a\u{7}b", "acquire"], "control"),
        (&["--lock", &lock, "acquire", "--ttl", "0"], "--ttl"),
        (&["--lock", &lock, "acquire", "--ttl", "banana"], "--ttl"),
        (&["--lock", &lock, "acquire", "--ttl", "-5"], "--ttl"),
        (&["--lock", &lock, "acquire", "--ttl", "99999999999999999999999"], "--ttl"),
        (&["--lock", &lock, "acquire", "--ttl", "1000000000000s"], "too long"),
        (&["--lock", &lock, "acquire", "--force-after", "soon"], "--force-after"),
        (&["--lock", &lock, "acquire", "--wait", "5s", "--no-wait"], "--no-wait"),
        (&["--lock", &lock, "acquire", "--retry-interval", "0"], "--retry-interval"),
        (&["--lock", &lock, "--store", "ftp://x", "acquire"], "ftp"),
        (&["--lock", &lock, "--store", "s3://", "acquire"], "bucket"),
        (&["--lock", &lock, "--store", "s3://bucket/../up", "acquire"], "prefix"),
        (&["--lock", &lock, "acquire", "--force"], "--reason"),
    ];
    for (args, needle) in cases {
        let out = e.cmd().args(["--owner", "me"]).args(*args).output().unwrap();
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Nothing was written by any of them.
    assert_eq!(
        std::fs::read_dir(e.dir.as_ref().unwrap())
            .unwrap()
            .filter(|f| f.as_ref().unwrap().file_name().to_string_lossy().ends_with(".lock"))
            .count(),
        0
    );
}

#[test]
fn release_outside_ci_without_an_owner_is_a_usage_error() {
    let Some(e) = Env::try_new(Backend::File, "no-owner") else { return };
    let out = e.cmd().args(["--lock", "x", "release"]).output().unwrap();
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--owner"), "{}", stderr(&out));
    // And without a lock name outside CI.
    let out = e.cmd().args(["--owner", "me", "status"]).output().unwrap();
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--lock"), "{}", stderr(&out));
}

fn gitlab_env(c: &mut std::process::Command, pipeline: &str, job: &str) {
    c.env("GITLAB_CI", "true")
        .env("CI_SERVER_HOST", "gitlab.example.com")
        .env("CI_PROJECT_PATH", "group/app")
        .env("CI_PIPELINE_ID", pipeline)
        .env("CI_PIPELINE_IID", "7")
        .env("CI_PIPELINE_URL", format!("https://gitlab.example.com/group/app/-/pipelines/{pipeline}"))
        .env("CI_JOB_ID", job)
        .env("CI_JOB_NAME", "deploy");
}

/// The headline flow: acquire in one job, release in a later job of the same pipeline.
#[test]
fn gitlab_later_job_releases_what_an_earlier_one_took() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "gitlab-flow") else {
        return;
    };
    let lock = e.lock("prod");
    let mut acquire = e.cmd();
    gitlab_env(&mut acquire, "1001", "1");
    let out = acquire
        .args(["--lock", &lock, "acquire", "--force-after", "3600", "--output", "env"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let dotenv = String::from_utf8(out.stdout).unwrap();
    assert!(dotenv.contains(&format!("PIPELINE_LOCK_NAME={lock}\n")), "{dotenv}");
    assert!(
        dotenv.contains("PIPELINE_LOCK_OWNER=gitlab:gitlab.example.com/group/app/pipelines/1001\n"),
        "{dotenv}"
    );
    assert!(dotenv.contains("PIPELINE_LOCK_FENCE="), "{dotenv}");
    let record = e.record(&lock);
    assert_eq!(record["Holder"]["Url"], "https://gitlab.example.com/group/app/-/pipelines/1001");
    assert_eq!(record["Holder"]["Ordinal"], 7);
    // Another pipeline cannot take it.
    let mut other = e.cmd();
    gitlab_env(&mut other, "1002", "5");
    assert_code(&other.args(["--lock", &lock, "acquire", "--no-wait"]).output().unwrap(), 73);
    // A later job (another CI_JOB_ID) of the first pipeline releases it.
    let mut release = e.cmd();
    gitlab_env(&mut release, "1001", "3");
    assert_code(&release.args(["--lock", &lock, "release"]).output().unwrap(), 0);
    assert!(e.record(&lock).get("Owner").is_none());
}

#[test]
fn github_outputs_are_appended() {
    let Some(e) = Env::try_new(Backend::File, "github") else { return };
    let dir = e.dir.clone().unwrap();
    let (genv, gout) = (dir.join("github_env"), dir.join("github_output"));
    std::fs::write(&genv, "EXISTING=1\n").unwrap();
    let out = e
        .cmd()
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_REPOSITORY", "org/repo")
        .env("GITHUB_RUN_ID", "555")
        .env("GITHUB_RUN_NUMBER", "9")
        .env("GITHUB_JOB", "deploy")
        .env("GITHUB_ENV", &genv)
        .env("GITHUB_OUTPUT", &gout)
        .args(["acquire"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let env_file = std::fs::read_to_string(&genv).unwrap();
    assert!(env_file.starts_with("EXISTING=1\nPIPELINE_LOCK_NAME=org/repo\n"), "{env_file}");
    assert!(
        env_file.contains("PIPELINE_LOCK_OWNER=github:github.com/org/repo/runs/555\n"),
        "{env_file}"
    );
    let outputs = std::fs::read_to_string(&gout).unwrap();
    let fence = e.record("org/repo")["Fence"].as_u64().unwrap();
    assert!(outputs.contains(&format!("fence={fence}\n")) && outputs.contains("token="), "{outputs}");
}

/// DESIGN: an uncontended acquire is one request, release one, status one.
#[test]
fn one_request_each_on_dynamodb() {
    for backend in [Backend::DynamoLocal, Backend::MotoDynamo] {
        let Some(e) = Env::try_new(backend, "requests") else { return };
        let lock = e.lock("l");
        for round in 0..2 {
            // Round 0 creates the item; round 1 grants over the tombstone.
            let (code, g) = e.json("alice", &lock, &["acquire"]);
            assert_eq!((code, g["requests"].as_u64()), (0, Some(1)), "{backend:?} round {round} acquire: {g}");
            let (code, s) = e.json("alice", &lock, &["status"]);
            assert_eq!((code, s["requests"].as_u64()), (0, Some(1)), "{backend:?} status: {s}");
            let (code, r) = e.json("alice", &lock, &["release"]);
            assert_eq!((code, r["requests"].as_u64()), (0, Some(1)), "{backend:?} release: {r}");
        }
    }
}

#[test]
fn missing_table_is_a_configuration_error_naming_the_fix() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "no-table") else {
        return;
    };
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_STORE", "dynamodb://no-such-table")
        .args(["--owner", "me", "--lock", "x", "acquire"])
        .output()
        .unwrap();
    assert_code(&out, 78);
    let err = stderr(&out);
    assert!(
        err.contains("no-such-table") && err.contains("create-table") && err.contains("terraform"),
        "{err}"
    );
}

#[test]
fn unreachable_endpoint_exits_69_after_bounded_retries() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "unreachable") else {
        return;
    };
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = Instant::now();
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .args(["--owner", "me", "--lock", "x", "acquire"])
        .output()
        .unwrap();
    assert_code(&out, 69);
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    assert!(stderr(&out).contains("dynamodb://"), "{}", stderr(&out));
}

/// A metadata service that accepts connections and never answers: we must not hang on it.
#[test]
fn no_credentials_exits_78_within_two_seconds() {
    let Some(e) = Env::try_new(Backend::File, "no-creds") else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", listener.local_addr().unwrap());
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    for (drop_var, needle) in [("AWS_ACCESS_KEY_ID", "credentials"), ("AWS_REGION", "region")] {
        let start = Instant::now();
        let out = e
            .cmd()
            .env_remove(drop_var)
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("PIPELINE_LOCK_STORE", "dynamodb://some-table")
            .args(["--owner", "me", "--lock", "x", "acquire"])
            .output()
            .unwrap();
        let took = start.elapsed();
        assert_code(&out, 78);
        assert!(took < Duration::from_millis(2500), "took {took:?}");
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
    hold.join().unwrap();
}

#[test]
fn a_store_that_speaks_nonsense_is_not_a_lock() {
    // An HTTP server answering 200 with garbage to everything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten().take(20) {
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 5\r\n\r\nnope!");
        }
    });
    let Some(e) = Env::try_new(Backend::DynamoLocal, "nonsense") else {
        return;
    };
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_ENDPOINT_URL", &url)
        .args(["--owner", "me", "--lock", "x", "acquire", "--no-wait"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn version_and_help() {
    let Some(e) = Env::try_new(Backend::File, "version") else { return };
    let out = e.cmd().arg("--version").output().unwrap();
    assert_code(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pipeline-lock "));
    let help = e.cmd().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("75  timed out waiting"));
}

#[test]
fn list_shows_every_lock() {
    let Some(e) = Env::try_new(Backend::File, "list") else { return };
    for (owner, lock) in [("a", "one"), ("b", "two/three")] {
        assert_code(&e.run(owner, &e.lock(lock), &["acquire"]), 0);
    }
    let out = e.cmd().args(["list"]).output().unwrap();
    assert_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}\theld by a", e.lock("one"))), "{text}");
    assert!(text.contains(&format!("{}\theld by b", e.lock("two/three"))), "{text}");
}
