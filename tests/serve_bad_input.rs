//! `serve` fed bad input: malformed JSON, huge bodies, bad ids and names, unknown paths,
//! wrong methods, slow clients. Every answer is a 4xx with the JSON error body, the server
//! stays up (no panic), and nothing is written to the store.

#[path = "serve/server.rs"]
mod server;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use server::Server;
use support::{Backend, Env};

/// The store holds no record of `lock`.
#[track_caller]
fn untouched(env: &Env, lock: &str) {
    let (code, v) = env.json("observer", lock, &["status"]);
    assert_eq!((code, v["state"].as_str()), (0, Some("absent")), "a refused request wrote {lock}: {v}");
}

#[test]
fn malformed_bodies_are_400_and_write_nothing() {
    let env = Env::new(Backend::File, "serve-bad-json");
    let srv = Server::start(&env);
    let lock = env.lock("x");
    let long = "n".repeat(1100);
    let cases: Vec<(&str, String, &str)> = vec![
        ("/api/v1/acquire", "{bad".into(), "not the JSON expected"),
        ("/api/v1/acquire", "".into(), "not the JSON expected"),
        ("/api/v1/acquire", "[]".into(), "not the JSON expected"),
        ("/api/v1/acquire", json!({"lock": lock}).to_string(), "owner"),
        (
            "/api/v1/acquire",
            json!({"lock": lock, "owner": "o", "colour": "red"}).to_string(),
            "colour",
        ),
        (
            "/api/v1/acquire",
            json!({"lock": lock, "owner": "o", "wait": "soon"}).to_string(),
            "not a duration",
        ),
        (
            "/api/v1/acquire",
            json!({"lock": lock, "owner": "o", "wait": "1h"}).to_string(),
            "max-wait",
        ),
        ("/api/v1/acquire", json!({"lock": lock, "owner": "o", "ttl": "0"}).to_string(), "ttl"),
        (
            "/api/v1/acquire",
            json!({"lock": lock, "owner": "o", "force": true}).to_string(),
            "reason",
        ),
        (
            "/api/v1/acquire",
            json!({"lock": lock, "owner": "o\nPIPELINE_LOCK_TOKEN=x"}).to_string(),
            "control",
        ),
        ("/api/v1/acquire", json!({"lock": "", "owner": "o"}).to_string(), "empty"),
        ("/api/v1/acquire", json!({"lock": long, "owner": "o"}).to_string(), "1024"),
        ("/api/v1/acquire", json!({"lock": lock, "owner": long}).to_string(), "1024"),
        (
            "/api/v1/acquire",
            json!({"lock": lock, "owner": "o", "queue": "random"}).to_string(),
            "queue",
        ),
        ("/api/v1/acquire", json!({"lock": lock, "owner": "o", "slots": 0}).to_string(), "slots"),
        ("/api/v1alpha1/lock", "{\"service\":".into(), "not the JSON expected"),
        ("/api/v1alpha1/lock", json!({"service": lock}).to_string(), "who"),
        ("/api/v1alpha1/lock", json!({"service": 7, "who": "w"}).to_string(), "service"),
        ("/api/v1alpha1/lock", json!({"service": "", "who": "w"}).to_string(), "empty"),
        (
            "/api/v1/release",
            json!({"lock": lock, "owner": "o", "force": true}).to_string(),
            "reason",
        ),
    ];
    for (path, body, needle) in cases {
        let r = srv
            .auth(Method::POST, path)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .unwrap();
        let (code, err) = server::answer(r);
        assert_eq!(code, 400, "{path} {body:.80}: {err}");
        assert_eq!(err["code"], "usage", "{path} {body:.80}: {err}");
        let text = err["error"].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{path} {body:.80}: {text:?} does not name {needle:?}");
    }
    untouched(&env, &lock);
    assert_eq!(srv.get("/healthz").0, 200, "the server is still up");
}

#[test]
fn a_huge_body_is_413_before_it_is_read_whole() {
    let env = Env::new(Backend::File, "serve-huge");
    let srv = Server::start(&env);
    let lock = env.lock("x");
    // A raw client, which reads the answer however the server ends the connection. Announced
    // as 4 MiB: refused on the announcement, before any of it is sent. Chunked (no length
    // announced): refused once more than the limit has arrived (here a 20 KiB chunk).
    let start = format!("{{\"lock\":\"{lock}\",\"owner\":\"o\",\"reason\":\"");
    for path in ["/api/v1/acquire", "/api/v1alpha1/lock"] {
        for chunked in [false, true] {
            let mut s = TcpStream::connect(srv.addr()).unwrap();
            let (length, body) = if chunked {
                let chunk = format!("{start}{}", "r".repeat(20 * 1024));
                (
                    "Transfer-Encoding: chunked".to_string(),
                    format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()),
                )
            } else {
                (format!("Content-Length: {}", 4 << 20), String::new())
            };
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{length}\r\n\r\n",
                server::TOKEN
            );
            s.write_all(format!("{head}{body}").as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut answer = vec![0; 4096];
            let n = s.read(&mut answer).unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1.1 413"), "{path} chunked={chunked}: {answer:.300}");
            assert!(answer.contains("\"too_large\""), "{path}: {answer:.300}");
        }
    }
    untouched(&env, &lock);
    assert_eq!(srv.get("/healthz").0, 200);
}

#[test]
fn bad_ids_unknown_paths_and_wrong_methods_are_json_4xx() {
    let env = Env::new(Backend::File, "serve-paths");
    let srv = Server::start(&env);
    let long = "a".repeat(5000);
    for id in [
        "zz",
        "507f1f77bcf86cd799439011",
        "6162.",
        ".ff",
        "0a.ff",
        "6162.f;f",
        long.as_str(),
        "%00.ff",
        "..%2f..%2fetc",
    ] {
        for route in ["lock", "unlock"] {
            let (code, err) = srv.get(&format!("/api/v1alpha1/{route}/{id}"));
            assert_eq!((code, err["code"].as_str()), (404, Some("not_found")), "{route}/{id:.40}: {err}");
        }
    }
    for path in ["/nope", "/api/v1alpha1", "/api/v1/lock", "/api/v2/locks", "/ui"] {
        let (code, err) = srv.get(path);
        assert_eq!((code, err["code"].as_str()), (404, Some("not_found")), "{path}: {err}");
    }
    for (method, path) in [
        (Method::GET, "/api/v1alpha1/lock"),
        (Method::PUT, "/api/v1alpha1/lock"),
        (Method::DELETE, "/api/v1alpha1/unlock/6162.ff"),
        (Method::POST, "/api/v1alpha1/locks/list"),
        (Method::GET, "/api/v1/acquire"),
        (Method::PATCH, "/api/v1/release"),
        (Method::POST, "/healthz"),
    ] {
        let (code, err) = server::answer(srv.auth(method.clone(), path).send().unwrap());
        assert_eq!((code, err["code"].as_str()), (405, Some("method_not_allowed")), "{method} {path}: {err}");
    }
    let (code, err) = srv.get("/api/v1alpha1/locks/list?per_page=lots");
    assert_eq!((code, err["code"].as_str()), (400, Some("bad_request")), "{err}");
    let (code, err) = srv.get("/api/v1/locks?limit=100000");
    assert_eq!(code, 400, "{err}");
    assert_eq!(srv.get("/healthz").0, 200);
}

/// Opens a connection that sends `head` and then nothing.
fn stalled(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

#[test]
fn slow_clients_do_not_block_others_and_are_cut_off() {
    let env = Env::new(Backend::File, "serve-slow");
    let srv = Server::start(&env);
    let lock = env.lock("x");
    // Many clients stuck in their request head, and in their body.
    let mut stuck: Vec<TcpStream> = (0..50)
        .map(|_| stalled(&srv.addr(), "POST /api/v1/acquire HTTP/1.1\r\nHost: x\r\n"))
        .collect();
    let body_head = format!(
        "POST /api/v1/acquire HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"lock\":",
        server::TOKEN
    );
    stuck.extend((0..50).map(|_| stalled(&srv.addr(), &body_head)));
    let start = Instant::now();
    let (code, got) = srv.post("/api/v1/acquire", json!({"lock": lock, "owner": "quick"}));
    assert_eq!(code, 200, "{got}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "a quick client waited {:?} behind slow ones",
        start.elapsed()
    );

    // The slow ones are cut off: the service does not keep them for ever.
    let mut slow = stalled(&srv.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "a stalled request head was kept {:?}",
        start.elapsed()
    );
    let mut body = &stuck[60];
    body.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = body.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 400"),
        "a stalled body got: {answer:?}"
    );
    assert_eq!(env.record(&lock)["Owner"], "quick", "only the quick client's grant was written");
}

#[test]
fn bad_serve_flags_are_usage_errors_before_anything_listens() {
    let env = Env::new(Backend::File, "serve-flags");
    let short = std::env::temp_dir().join(support::unique("short-token"));
    std::fs::write(&short, "abc\n").unwrap();
    let short = short.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 5] = [
        (&["serve"], "--token-file"),
        (&["serve", "--public-read", "--listen", "localhost"], "not an address"),
        (&["serve", "--public-read", "--grpc-listen", "8765"], "not an address"),
        (&["serve", "--token-file", "/nonexistent/token"], "cannot read --token-file"),
        (&["serve", "--token-file", short.as_str()], "at least 16"),
    ];
    for (args, needle) in cases {
        let out = env.cmd().args(args).output().unwrap();
        support::assert_code(&out, 2);
        let err = support::stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed an address: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
