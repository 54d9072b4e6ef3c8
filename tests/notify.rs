//! `--notify URL` through the real binary, against a local HTTP receiver that each test starts
//! on a random port: the right events, once each, with a Slack-compatible `text`; a receiver
//! that hangs or answers 500 changes neither the exit code nor the time by more than the
//! 2 s bound; the URL's secret path is never printed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Backend, Env, assert_code, stderr};

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Hang,
}

/// A receiver on a random loopback port that keeps every JSON body it gets.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

const SECRET: &str = "T000/B000/s3cr3t-token";

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/services/{SECRET}", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let keep = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    keep.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                    let mut stream = stream;
                    match answer {
                        Answer::Ok => {
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        }
                        Answer::Fail => {
                            let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        }
                        Answer::Hang => std::thread::sleep(Duration::from_secs(30)),
                    }
                });
            }
        });
        Receiver { url, bodies }
    }

    /// The events received, by their `event` field.
    fn events(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["event"]["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    fn body(&self, i: usize) -> serde_json::Value {
        self.bodies.lock().unwrap()[i].clone()
    }
}

fn file_env(test: &str) -> Env {
    Env::new(Backend::File, test)
}

#[test]
fn a_takeover_is_announced_once_with_a_slack_text_and_the_event() {
    let (e, hook) = (file_env("notify-takeover"), Receiver::start(Answer::Ok));
    let lock = e.lock("l");
    assert_code(&e.run("old", &lock, &["acquire", "--ttl", "1s"]), 0);
    let out = e.run(
        "new",
        &lock,
        &[
            "acquire",
            "--wait",
            "30s",
            "--retry-interval",
            "200ms",
            "--clock-margin",
            "200ms",
            "--notify",
            &hook.url,
        ],
    );
    assert_code(&out, 0);
    assert_eq!(hook.events(), ["taken-over"]);
    let body = hook.body(0);
    assert_eq!(
        (body["event"]["lock"].as_str(), body["event"]["holder"].as_str()),
        (Some(lock.as_str()), Some("old"))
    );
    assert_eq!(body["event"]["owner"], "new");
    assert!(
        body["text"].as_str().is_some_and(|t| t.contains("took over") && t.contains(&lock)),
        "{body}"
    );
}

#[test]
fn a_forced_takeover_and_the_lost_lease_it_causes_are_announced_once_each() {
    let (e, hook) = (file_env("notify-forced"), Receiver::start(Answer::Ok));
    let lock = e.lock("l");
    assert_code(&e.run("old", &lock, &["acquire"]), 0);
    let forced = e.run(
        "breaker",
        &lock,
        &["acquire", "--force", "--reason", "stuck deploy", "--notify", &hook.url],
    );
    assert_code(&forced, 0);
    assert_eq!(hook.events(), ["forced"]);
    // The old holder's release finds the lock taken from it: exit 76, and one lease-lost event.
    let lost = e
        .cmd()
        .args(["--owner", "old", "--lock", &lock, "release"])
        .env("PIPELINE_LOCK_NOTIFY", &hook.url)
        .output()
        .unwrap();
    assert_code(&lost, 76);
    assert_eq!(hook.events(), ["forced", "lease-lost"]);
    assert_eq!(hook.body(1)["event"]["owner"], "old");
    // A break-glass release is announced as forced too.
    assert_code(
        &e.run("operator", &lock, &["release", "--force", "--reason", "cleanup", "--notify", &hook.url]),
        0,
    );
    assert_eq!(hook.events(), ["forced", "lease-lost", "forced"]);
    assert!(
        hook.body(2)["event"]["why"].as_str().is_some_and(|w| w.contains("cleanup")),
        "{}",
        hook.body(2)
    );
    // A plain acquire and release announce nothing.
    let other = e.lock("quiet");
    assert_code(&e.run("a", &other, &["acquire", "--notify", &hook.url]), 0);
    assert_code(&e.run("a", &other, &["release", "--notify", &hook.url]), 0);
    assert_eq!(hook.events().len(), 3);
}

#[test]
fn a_long_wait_is_announced_once_and_the_wait_goes_on() {
    let (e, hook) = (file_env("notify-wait"), Receiver::start(Answer::Ok));
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let args = [
        "acquire",
        "--wait",
        "2s",
        "--retry-interval",
        "200ms",
        "--notify-after",
        "500ms",
        "--notify",
        &hook.url,
    ];
    let out = e.run("waiter", &lock, &args);
    assert_code(&out, 75);
    assert_eq!(hook.events(), ["waiting"]);
    assert_eq!(hook.body(0)["event"]["holder"], "holder");
    assert_eq!(hook.body(0)["event"]["waited_s"], 0, "half a second, in whole seconds");
}

#[test]
fn a_receiver_that_hangs_or_fails_changes_neither_the_exit_code_nor_the_time_beyond_the_bound() {
    for answer in [Answer::Hang, Answer::Fail] {
        let (e, hook) = (file_env("notify-bad"), Receiver::start(answer));
        let lock = e.lock("l");
        assert_code(&e.run("old", &lock, &["acquire"]), 0);
        let start = Instant::now();
        let out = e.run("breaker", &lock, &["acquire", "--force", "--reason", "r", "--notify", &hook.url]);
        let took = start.elapsed();
        assert_code(&out, 0);
        assert_eq!(hook.events(), ["forced"], "it was sent");
        let err = stderr(&out);
        println!(
            "acquire --force with a receiver that {}: {took:?}",
            if answer == Answer::Hang { "hangs" } else { "answers 500" }
        );
        assert!(took < Duration::from_millis(3500), "{took:?}: {err}");
        let host = hook.url.split("/services").next().unwrap();
        assert!(err.contains(&format!("notification to {host}")), "{err}");
        assert!(!err.contains("s3cr3t") && !err.contains("/services"), "the secret is printed: {err}");
        if answer == Answer::Fail {
            assert!(err.contains("500"), "{err}");
        }
    }
}

#[test]
fn a_hanging_receiver_does_not_hold_up_a_wait() {
    let (e, hook) = (file_env("notify-wait-hang"), Receiver::start(Answer::Hang));
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    let args = [
        "acquire",
        "--wait",
        "20s",
        "--retry-interval",
        "200ms",
        "--notify-after",
        "300ms",
        "--notify",
        &hook.url,
    ];
    let start = Instant::now();
    let waiter = e.spawn("waiter", &lock, &args);
    std::thread::sleep(Duration::from_secs(1));
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    let out = waiter.wait_with_output().unwrap();
    let took = start.elapsed();
    assert_code(&out, 0);
    assert_eq!(hook.events(), ["waiting"]);
    println!("a wait of about 1 s beside a hanging receiver: {took:?}");
    // Granted about 1 s in; the notification sent at 0.3 s is given up by 2.3 s at the latest.
    assert!(took < Duration::from_millis(3800), "{took:?}");
}

#[test]
fn a_url_that_is_not_http_is_a_usage_error_that_does_not_show_it() {
    let e = file_env("notify-bad-url");
    let out = e.run("a", &e.lock("l"), &["acquire", "--notify", "ftp://host/s3cr3t"]);
    assert_code(&out, 2);
    assert!(!stderr(&out).contains("s3cr3t"), "{}", stderr(&out));
}

#[test]
fn run_announces_its_takeover_and_the_lease_it_loses() {
    let (e, hook) = (file_env("notify-run"), Receiver::start(Answer::Ok));
    let lock = e.lock("l");
    assert_code(&e.run("old", &lock, &["acquire", "--ttl", "1s"]), 0);
    // run takes the stale lock over, then someone forces it away while the command runs.
    let args = [
        "run",
        "--ttl",
        "3s",
        "--clock-margin",
        "200ms",
        "--kill-grace",
        "200ms",
        "--heartbeat",
        "500ms",
        "--retry-interval",
        "200ms",
        "--notify",
        &hook.url,
        "--",
        "sleep",
        "20",
    ];
    let runner = e.spawn("runner", &lock, &args);
    support::wait_until("run's grant", Duration::from_secs(10), || hook.events() == ["taken-over"]);
    assert_code(&e.run("breaker", &lock, &["acquire", "--force", "--reason", "r"]), 0);
    let out = runner.wait_with_output().unwrap();
    assert_code(&out, 76);
    assert_eq!(hook.events(), ["taken-over", "lease-lost"]);
}
