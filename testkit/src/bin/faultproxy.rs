//! The safety checker's fault proxy (see `tests/safety.rs`): an HTTP/1.1 proxy on loopback
//! in front of a store server that, on command, misbehaves the ways a network and a cloud
//! service do. It understands just enough HTTP to find where requests and replies end.
//!
//! ```text
//! faultproxy HOST:PORT [PORT]  print "PORT CONTROL_PORT", then proxy 127.0.0.1:PORT to HOST:PORT
//!                              (PORT: a given one, to stand in for a proxy that was killed)
//! ```
//!
//! Control port, one line each (answer `ok`); P is the share of requests hit, 0.0 to 1.0:
//! - `set pass`
//! - `set delay MS P`: hold the request MS milliseconds, then forward it
//! - `set drop-reply P`: forward the request, then close the connection instead of answering
//!   (the write happened; the client never hears)
//! - `set fail P`: answer 500 without forwarding
//! - `set fail-after P`: forward, then answer 500 (the write happened; the client hears 5xx)
//! - `set conflict P`: answer S3 writes 409 ConditionalRequestConflict without forwarding
//! - `set blackhole P`: hold the request without an answer until the mode changes, then
//!   deliver it late (as TCP would after a partition heals), whether or not anyone still listens
//! - `upstream HOST:PORT`: forward to another server (a restarted store)
//! - `stats`: one JSON object, requests by what was done to them

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Pass,
    Delay(u64, f64),
    DropReply(f64),
    Fail(f64),
    FailAfter(f64),
    Conflict(f64),
    Blackhole(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Delay(u64),
    DropReply,
    Fail,
    FailAfter,
    Conflict,
    Blackhole,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "passed",
            Fault::Delay(_) => "delayed",
            Fault::DropReply => "reply-dropped",
            Fault::Fail => "failed-500",
            Fault::FailAfter => "failed-500-after-forwarding",
            Fault::Conflict => "conflict-409",
            Fault::Blackhole => "blackholed",
        }
    }
}

struct Ctl {
    mode: Mode,
    upstream: String,
    counts: BTreeMap<&'static str, u64>,
}

type Shared = Arc<Mutex<Ctl>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Ctl> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() -> anyhow::Result<()> {
    let upstream = std::env::args().nth(1).context("usage: faultproxy HOST:PORT [PORT]")?;
    let port: u16 = match std::env::args().nth(2) {
        Some(p) => p.parse().with_context(|| format!("faultproxy: port {p:?} is not a number"))?,
        None => 0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("faultproxy: cannot start the runtime")?;
    rt.block_on(async move {
        let data = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("faultproxy: cannot bind 127.0.0.1:{port}"))?;
        let control = TcpListener::bind("127.0.0.1:0")
            .await
            .context("faultproxy: cannot bind the control port")?;
        println!("{} {}", data.local_addr()?.port(), control.local_addr()?.port());
        let _ = std::io::stdout().flush();
        let ctl: Shared = Arc::new(Mutex::new(Ctl {
            mode: Mode::Pass,
            upstream,
            counts: BTreeMap::new(),
        }));
        let (changed, _) = watch::channel(0u64);
        let changed = Arc::new(changed);
        {
            let (ctl, changed) = (ctl.clone(), changed.clone());
            tokio::spawn(async move {
                while let Ok((s, _)) = control.accept().await {
                    tokio::spawn(control_conn(s, ctl.clone(), changed.clone()));
                }
            });
        }
        while let Ok((s, _)) = data.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(proxy_conn(s, ctl.clone(), changed.subscribe()));
        }
        Ok(())
    })
}

async fn control_conn(s: TcpStream, ctl: Shared, changed: Arc<watch::Sender<u64>>) {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let p = |i: usize| words.get(i).and_then(|w| w.parse::<f64>().ok()).unwrap_or(1.0);
        let reply = {
            let mut c = lock(&ctl);
            let mode = match words.as_slice() {
                ["set", "pass"] => Some(Mode::Pass),
                ["set", "delay", ms, ..] => ms.parse().ok().map(|ms| Mode::Delay(ms, p(3))),
                ["set", "drop-reply", ..] => Some(Mode::DropReply(p(2))),
                ["set", "fail", ..] => Some(Mode::Fail(p(2))),
                ["set", "fail-after", ..] => Some(Mode::FailAfter(p(2))),
                ["set", "conflict", ..] => Some(Mode::Conflict(p(2))),
                ["set", "blackhole", ..] => Some(Mode::Blackhole(p(2))),
                _ => None,
            };
            match (mode, words.as_slice()) {
                (Some(m), _) => {
                    c.mode = m;
                    "ok".to_string()
                }
                (None, ["upstream", addr]) => {
                    c.upstream = addr.to_string();
                    "ok".to_string()
                }
                (None, ["stats"]) => serde_json::to_string(&c.counts).unwrap_or_default(),
                _ => format!("error unknown command {line:?}"),
            }
        };
        changed.send_modify(|g| *g += 1);
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One HTTP message, raw, with what matters for forwarding it.
struct Message {
    raw: Vec<u8>,
    method: String,
    dynamo: bool,
    close: bool,
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>, raw: &mut Vec<u8>) -> std::io::Result<usize> {
    let n = r.read_until(b'\n', raw).await?;
    Ok(n)
}

/// Reads one request (or, with `request_method`, the reply to it). `Ok(None)` at a clean EOF.
async fn read_message<R: AsyncRead + Unpin>(r: &mut BufReader<R>, request_method: Option<&str>) -> std::io::Result<Option<Message>> {
    let mut raw = Vec::new();
    let start = read_line(r, &mut raw).await?;
    if start == 0 {
        return Ok(None);
    }
    let first = String::from_utf8_lossy(&raw).trim().to_string();
    let mut words = first.split_whitespace();
    let (method, status, http10) = match request_method {
        None => (words.next().unwrap_or("").to_string(), 0, false),
        Some(m) => {
            let version = words.next().unwrap_or("");
            (
                m.to_string(),
                words.next().and_then(|s| s.parse().ok()).unwrap_or(0),
                version == "HTTP/1.0",
            )
        }
    };
    let (mut length, mut chunked, mut close, mut dynamo) = (None::<usize>, false, http10, false);
    loop {
        let at = raw.len();
        if read_line(r, &mut raw).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&raw[at..]).trim().to_string();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value.contains("close") || (http10 && !value.contains("keep-alive")),
            "x-amz-target" => dynamo = value.starts_with("dynamodb"),
            _ => {}
        }
    }
    let bodyless = request_method.is_some() && (method == "HEAD" || status / 100 == 1 || status == 204 || status == 304);
    if bodyless {
    } else if chunked {
        loop {
            let at = raw.len();
            if read_line(r, &mut raw).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let size_line = String::from_utf8_lossy(&raw[at..]).trim().to_string();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let at = raw.len();
                    if read_line(r, &mut raw).await? == 0 || raw[at..].iter().all(|b| b.is_ascii_whitespace()) {
                        break;
                    }
                }
                break;
            }
            let at = raw.len();
            raw.resize(at + size + 2, 0);
            r.read_exact(&mut raw[at..]).await?;
        }
    } else if let Some(n) = length {
        let at = raw.len();
        raw.resize(at + n, 0);
        r.read_exact(&mut raw[at..]).await?;
    } else if request_method.is_some() {
        // No length: the body runs to the end of the connection.
        r.read_to_end(&mut raw).await?;
        close = true;
    }
    Ok(Some(Message { raw, method, dynamo, close }))
}

fn decide(ctl: &Shared, req: &Message) -> Fault {
    let mut c = lock(ctl);
    let hit = |p: f64| rand::random::<f64>() < p;
    let fault = match c.mode {
        Mode::Pass => Fault::None,
        Mode::Delay(ms, p) if hit(p) => Fault::Delay(ms),
        Mode::DropReply(p) if hit(p) => Fault::DropReply,
        Mode::Fail(p) if hit(p) => Fault::Fail,
        Mode::FailAfter(p) if hit(p) => Fault::FailAfter,
        // S3 answers 409 to overlapping conditional writes only; DynamoDB never does.
        Mode::Conflict(p) if !req.dynamo && matches!(req.method.as_str(), "PUT" | "DELETE") && hit(p) => Fault::Conflict,
        Mode::Blackhole(p) if hit(p) => Fault::Blackhole,
        _ => Fault::None,
    };
    *c.counts.entry(fault.name()).or_default() += 1;
    fault
}

fn error_reply(status: u16, dynamo: bool) -> Vec<u8> {
    let (reason, code) = match status {
        409 => ("Conflict", "ConditionalRequestConflict"),
        _ => ("Internal Server Error", if dynamo { "InternalServerError" } else { "InternalError" }),
    };
    let (ctype, body) = if dynamo {
        (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"faultproxy: injected"}}"#),
        )
    } else {
        (
            "application/xml",
            format!(r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>faultproxy: injected</Message></Error>"#),
        )
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nx-amzn-RequestId: faultproxy\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

type Upstream = (BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf);

async fn forward(up: &mut Option<Upstream>, ctl: &Shared, req: &Message) -> std::io::Result<Message> {
    if up.is_none() {
        let addr = lock(ctl).upstream.clone();
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        *up = Some((BufReader::new(r), w));
    }
    let (r, w) = up.as_mut().expect("connected");
    let result = async {
        w.write_all(&req.raw).await?;
        read_message(r, Some(&req.method))
            .await?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
    .await;
    if result.as_ref().map_or(true, |m| m.close) {
        *up = None;
    }
    result
}

async fn proxy_conn(client: TcpStream, ctl: Shared, mut changed: watch::Receiver<u64>) {
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    let mut up: Option<Upstream> = None;
    while let Ok(Some(req)) = read_message(&mut cr, None).await {
        let fault = decide(&ctl, &req);
        match fault {
            Fault::Fail | Fault::Conflict => {
                let status = if fault == Fault::Fail { 500 } else { 409 };
                if cw.write_all(&error_reply(status, req.dynamo)).await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Blackhole => {
                changed.borrow_and_update();
                while matches!(lock(&ctl).mode, Mode::Blackhole(_)) {
                    if changed.changed().await.is_err() {
                        return;
                    }
                }
            }
            _ => {}
        }
        let Ok(reply) = forward(&mut up, &ctl, &req).await else {
            // The store is down (or restarting): the client sees its connection close.
            return;
        };
        let out = match fault {
            Fault::DropReply => return,
            Fault::FailAfter => error_reply(500, req.dynamo),
            _ => reply.raw,
        };
        if cw.write_all(&out).await.is_err() || reply.close {
            return;
        }
    }
}
