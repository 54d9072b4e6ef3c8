//! A `pipeline-lock serve` process on a random port, and a real HTTP client (reqwest) for it.
#![allow(dead_code)] // shared by several test crates, each using part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::Env;

/// The token the test servers accept.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A running server. Stopped with SIGTERM on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// The gRPC address, with `--grpc-listen`.
    pub grpc: Option<String>,
    pub http: reqwest::blocking::Client,
    /// Its stderr (the access log), collected by a thread.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// How a test server is started.
#[derive(Default, Clone)]
pub struct Opts {
    pub public_read: bool,
    pub no_token: bool,
    pub extra: Vec<String>,
}

impl Server {
    pub fn start(env: &Env) -> Server {
        Server::start_with(env, Opts::default())
    }

    pub fn start_with(env: &Env, opts: Opts) -> Server {
        let token_file = std::env::temp_dir().join(format!("{}.token", crate::support::unique("serve-token")));
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut cmd = env.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if !opts.no_token {
            cmd.arg("--token-file").arg(&token_file);
        }
        if opts.public_read {
            cmd.arg("--public-read");
        }
        cmd.args(&opts.extra);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // `gRPC ... on ADDR` (with --grpc-listen), then `serving STORE on http://ADDR`.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut grpc = None;
        let url = loop {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let at = line.trim().rsplit(" on ").next().unwrap_or_default().to_string();
            match () {
                _ if line.starts_with("gRPC") => grpc = Some(at),
                _ if at.starts_with("http://") => break at,
                _ => panic!("serve did not print its address: {line:?}"),
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Server { child, url, grpc, http, log }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// A request with the token.
    pub fn auth(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {TOKEN}"))
    }

    /// A request without any token.
    pub fn anon(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// POSTs `body` with the token; the status and the JSON answer.
    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        answer(self.auth(reqwest::Method::POST, path).json(&body).send().unwrap())
    }

    /// GETs with the token; the status and the JSON answer.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        answer(self.auth(reqwest::Method::GET, path).send().unwrap())
    }

    /// SIGTERM, and the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "serve did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
    }
}

/// The status and JSON body of a response (`Null` when the body is not JSON).
pub fn answer(r: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// Every field of `documented` is in `ours` with the same JSON type (recursively; for
/// arrays, against the first element).
#[track_caller]
pub fn same_shape(what: &str, documented: &serde_json::Value, ours: &serde_json::Value) {
    use serde_json::Value::*;
    match (documented, ours) {
        (Object(d), Object(o)) => {
            for (k, v) in d {
                let mine = o.get(k).unwrap_or_else(|| panic!("{what}: no field {k:?} in {ours}"));
                same_shape(&format!("{what}.{k}"), v, mine);
            }
        }
        (Array(d), Array(o)) => {
            if let (Some(d), Some(o)) = (d.first(), o.first()) {
                same_shape(&format!("{what}[0]"), d, o);
            }
        }
        (String(_), String(_)) | (Bool(_), Bool(_)) | (Number(_), Number(_)) | (Null, Null) => {}
        _ => panic!("{what}: documented {documented}, ours {ours}"),
    }
}

/// A fixture of Tracker's documented API.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/tracker/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
