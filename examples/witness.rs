//! The safety checker's witness (see `tests/safety.rs`): a small single-threaded server on
//! loopback that holds a counter and a fenced register and logs every request in one total
//! order. It is never paused and never runs under `faketime`, so its order is the truth the
//! checker judges the lock by.
//!
//! ```text
//! witness serve [--unfenced]   print the port, then serve on 127.0.0.1
//! witness client ADDR          the guarded command (run by `pipeline-lock run`): begin, read the
//!                              counter, sleep 10-50 ms, write counter+1 with its fence, end.
//!                              Exit 0, or 10 when the witness rejected the write (stale fence).
//! ```
//!
//! Protocol, one line per request and one per answer:
//! `begin OWNER FENCE PID`, `read OWNER`, `write OWNER FENCE VALUE` (`ok` or `rejected`),
//! `end OWNER`, `mark TEXT` (a nemesis note), `epoch TEXT` (the store lost its data: fences
//! restart), `open` (owners inside begin..end, newest first, as `OWNER:PID`), `counter`,
//! `dump` (the log as JSON lines, then `end`).
//!
//! Fenced mode (the default) rejects a write whose (epoch, fence) is below the highest seen in
//! any request; an owner's epoch is the one current at its `begin`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(!args.iter().any(|a| a == "--unfenced")),
        Some("client") => std::process::exit(client(args.get(2).expect("witness client ADDR"))),
        _ => {
            eprintln!("usage: witness serve [--unfenced] | witness client ADDR");
            std::process::exit(2);
        }
    }
}

#[derive(Debug, Clone)]
struct Owner {
    fence: u64,
    epoch: u64,
    pid: u32,
    open: bool,
    began: u64,
}

struct State {
    start: Instant,
    fenced: bool,
    counter: u64,
    epoch: u64,
    highest: (u64, u64),
    owners: HashMap<String, Owner>,
    log: Vec<serde_json::Value>,
}

impl State {
    /// Appends one event; `(fence, epoch)` are the owner's, `value` what was read or written.
    fn log(&mut self, kind: &str, owner: &str, (fence, epoch): (u64, u64), value: u64, ok: bool, text: &str) {
        let t = self.start.elapsed().as_millis() as u64;
        let seq = self.log.len() as u64;
        self.log.push(serde_json::json!({
            "seq": seq, "t": t, "kind": kind, "owner": owner, "fence": fence, "epoch": epoch,
            "value": value, "ok": ok, "text": text,
        }));
    }

    fn owner(&self, name: &str) -> Owner {
        self.owners.get(name).cloned().unwrap_or(Owner {
            fence: 0,
            epoch: self.epoch,
            pid: 0,
            open: false,
            began: 0,
        })
    }

    fn see(&mut self, key: (u64, u64)) {
        if self.fenced && key > self.highest {
            self.highest = key;
        }
    }

    /// One request, handled whole: nothing else runs in between, so the log is a total order.
    fn handle(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match (words.first().copied(), words.get(1).copied()) {
            (Some("begin"), Some(owner)) => {
                let (Some(fence), pid) = (num(2), num(3).unwrap_or(0)) else {
                    return "error fence\n".into();
                };
                let epoch = self.epoch;
                let began = self.log.len() as u64;
                self.owners.insert(
                    owner.to_string(),
                    Owner {
                        fence,
                        epoch,
                        pid: pid as u32,
                        open: true,
                        began,
                    },
                );
                self.see((epoch, fence));
                self.log("begin", owner, (fence, epoch), pid, true, "");
                "ok\n".into()
            }
            (Some("read"), Some(owner)) => {
                let o = self.owner(owner);
                self.see((o.epoch, o.fence));
                let value = self.counter;
                self.log("read", owner, (o.fence, o.epoch), value, true, "");
                format!("value {value}\n")
            }
            (Some("write"), Some(owner)) => {
                let (Some(fence), Some(value)) = (num(2), num(3)) else {
                    return "error write\n".into();
                };
                let o = self.owner(owner);
                let key = (o.epoch, fence);
                let ok = !self.fenced || key >= self.highest;
                if ok {
                    self.counter = value;
                    self.see(key);
                }
                self.log("write", owner, (fence, o.epoch), value, ok, "");
                if ok { "ok\n".into() } else { "rejected\n".into() }
            }
            (Some("end"), Some(owner)) => {
                let o = self.owner(owner);
                if let Some(x) = self.owners.get_mut(owner) {
                    x.open = false;
                }
                self.log("end", owner, (o.fence, o.epoch), 0, true, "");
                "ok\n".into()
            }
            (Some("mark"), _) => {
                let text = line.trim_start().strip_prefix("mark").unwrap_or("").trim().to_string();
                let epoch = self.epoch;
                self.log("mark", "", (0, epoch), 0, true, &text);
                "ok\n".into()
            }
            (Some("epoch"), _) => {
                self.epoch += 1;
                self.highest = (self.epoch, 0);
                let text = line.trim_start().strip_prefix("epoch").unwrap_or("").trim().to_string();
                let epoch = self.epoch;
                self.log("epoch", "", (0, epoch), 0, true, &text);
                "ok\n".into()
            }
            (Some("open"), _) => {
                let mut open: Vec<(&String, &Owner)> = self.owners.iter().filter(|(_, o)| o.open).collect();
                open.sort_by_key(|(_, o)| std::cmp::Reverse(o.began));
                let list: Vec<String> = open.iter().map(|(n, o)| format!("{n}:{}", o.pid)).collect();
                format!("open {}\n", list.join(" "))
            }
            (Some("counter"), _) => format!("value {}\n", self.counter),
            (Some("dump"), _) => {
                let mut out = String::new();
                for e in &self.log {
                    out.push_str(&e.to_string());
                    out.push('\n');
                }
                out.push_str("end\n");
                out
            }
            _ => format!("error unknown request {line:?}\n"),
        }
    }
}

fn serve(fenced: bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr").port());
        let _ = std::io::stdout().flush();
        let state = Rc::new(RefCell::new(State {
            start: Instant::now(),
            fenced,
            counter: 0,
            epoch: 0,
            highest: (0, 0),
            owners: HashMap::new(),
            log: Vec::new(),
        }));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = state.borrow_mut().handle(&line);
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn client(addr: &str) -> i32 {
    let owner = std::env::var("PIPELINE_LOCK_OWNER").unwrap_or_default();
    let fence = std::env::var("PIPELINE_LOCK_FENCE").unwrap_or_default();
    let run = || -> std::io::Result<bool> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream);
        let mut ask = |line: String| -> std::io::Result<String> {
            w.write_all(line.as_bytes())?;
            let mut reply = String::new();
            r.read_line(&mut reply)?;
            Ok(reply.trim().to_string())
        };
        ask(format!("begin {owner} {fence} {}\n", std::process::id()))?;
        let value: u64 = ask(format!("read {owner}\n"))?.trim_start_matches("value ").parse().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(10 + rand::random::<u64>() % 41));
        let accepted = ask(format!("write {owner} {fence} {}\n", value + 1))? == "ok";
        ask(format!("end {owner}\n"))?;
        Ok(accepted)
    };
    match run() {
        Ok(true) => 0,
        Ok(false) => 10,
        Err(e) => {
            eprintln!("witness client {owner}: {e}");
            11
        }
    }
}
