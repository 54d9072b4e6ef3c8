//! A state write whose reply is lost (docs/design.md rule 6): a proxy in front of the real
//! store forwards the first write, reads the store's answer and closes the connection
//! instead of passing it on. The SDK retries; the retry meets our own entry (DynamoDB: a
//! failed condition; S3: 412 to If-None-Match), and `state put` must report it done, once,
//! not refused: `--if-version 0` on a fresh key makes any other outcome visible as exit 79.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use support::{Backend, Env, assert_code};

/// Reads one HTTP/1.1 message (head and a Content-Length body) from `r`; `None` at EOF.
fn message(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A proxy to `upstream` that loses the reply of the first write (PUT, or a DynamoDB
/// UpdateItem); returns its URL and how many replies it dropped.
fn proxy(upstream: &str) -> (String, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_string();
    let dropped = Arc::new(AtomicU32::new(0));
    let count = dropped.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (upstream, count) = (upstream.clone(), count.clone());
            std::thread::spawn(move || {
                let server = TcpStream::connect(&upstream).unwrap();
                let (mut from_client, mut to_client) = (BufReader::new(client.try_clone().unwrap()), client);
                let (mut from_server, mut to_server) = (BufReader::new(server.try_clone().unwrap()), server);
                while let Some((head, body)) = message(&mut from_client) {
                    let write = head.starts_with("PUT ") || head.to_ascii_lowercase().contains("dynamodb_20120810.updateitem");
                    to_server.write_all(head.as_bytes()).unwrap();
                    to_server.write_all(&body).unwrap();
                    let Some((reply_head, reply_body)) = message(&mut from_server) else {
                        return;
                    };
                    if write && count.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        // The write happened; the client never hears.
                        let _ = to_client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    if to_client
                        .write_all(reply_head.as_bytes())
                        .and_then(|_| to_client.write_all(&reply_body))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, dropped)
}

fn a_put_whose_reply_is_lost_is_done_once(b: Backend) {
    let Some(e) = Env::try_new(b, "state-lost-reply") else { return };
    let (url, dropped) = proxy(e.endpoint.as_deref().unwrap());
    let key = e.lock("deployed");
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_ENDPOINT_URL", &url)
        .args([
            "--owner",
            "ci",
            "state",
            "put",
            &key,
            "--value",
            "v1",
            "--if-version",
            "0",
            "--fence",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the proxy lost one reply");
    assert_code(&out, 0);
    let read = e.cmd().args(["state", "get", &key, "--output", "json"]).output().unwrap();
    assert_code(&read, 0);
    let v: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(
        (v["value"].as_str(), v["version"].as_u64(), v["fence"].as_u64()),
        (Some("v1"), Some(1), Some(3)),
        "{v}"
    );
}

mod dynamodb_local {
    #[test]
    fn a_put_whose_reply_is_lost_is_done_once() {
        super::a_put_whose_reply_is_lost_is_done_once(super::Backend::DynamoLocal)
    }
}

mod moto_s3 {
    #[test]
    fn a_put_whose_reply_is_lost_is_done_once() {
        super::a_put_whose_reply_is_lost_is_done_once(super::Backend::MotoS3)
    }
}
