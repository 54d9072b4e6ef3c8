//! The safety checker's witness (see `tests/safety.rs`): a small single-threaded server on
//! loopback that holds a counter and a fenced register and logs every request in one total
//! order. It is never paused and never runs under `faketime`, so its order is the truth the
//! checker judges the lock by.
//!
//! ```text
//! witness serve [--unfenced]   print the port, then serve on 127.0.0.1
//! witness client ADDR [OPTIONS] the guarded command (run by `pipeline-lock run`, or by a CI job
//!                              after `acquire`): begin, read the counter, sleep 10-50 ms, write
//!                              counter+1 with its fence, end. Exit 0, or 10 when the witness
//!                              rejected a write (stale fence).
//! ```
//!
//! Client options, for the CI-shaped scenarios (`tests/safety/pipelines.rs`):
//! - `--as NAME`: the name the witness knows this holder by (default `PIPELINE_LOCK_OWNER`).
//!   Two processes that share an owner string (jobs of one pipeline) are two holders to the
//!   witness; the lock owner goes into the `begin` event's text.
//! - `--writes N`: N read-increment-write rounds in one begin..end (a long stage); every one is
//!   sent, rejected or not, so a stale holder that carries on shows in the log.
//! - `--gap MS`: the pause between read and write (default 10-50 ms at random).
//! - `--trap-term`: ignore SIGTERM and keep writing (a deploy script that traps TERM).
//! - `--mode shared|exclusive` and `--slots N`, for pools (`run --slots N [--shared]`): the
//!   `begin` says the mode and the slot (`PIPELINE_LOCK_SLOT`); a shared holder reads and
//!   writes the register of its slot, an exclusive one each of the N registers in turn.
//! - `--mode lock`, `--slot K` (instead of `PIPELINE_LOCK_SLOT`) and `--fence-of LOCK` (that
//!   lock's fence in `PIPELINE_LOCK_FENCES`, instead of `PIPELINE_LOCK_FENCE`), for several
//!   locks at once: each lock is a register with fences of its own, so a holder of A and B
//!   runs one client per lock, and two holders of one lock show as two in one slot.
//!
//! Protocol, one line per request and one per answer:
//! `begin OWNER FENCE PID [LOCK_OWNER] [mode=shared|exclusive] [slot=K]`,
//! `read OWNER [reg=K]`, `write OWNER FENCE VALUE [reg=K]` (`ok` or `rejected`),
//! `end OWNER`, `mark TEXT` (a nemesis note), `epoch TEXT` (the store lost its data: fences
//! restart), `open` (owners inside begin..end, newest first, as `OWNER:PID`), `counter`,
//! `dump` (the log as JSON lines, then `end`).
//!
//! Registers: one per pool slot (`reg=K`, 1 to N), and register 0, the only one of a plain
//! mutex. A pool's slots are its resources (the staging environments of a pool of N): a shared
//! holder uses the register of its slot only, so shared holders of different slots never
//! fence each other off, while a stale holder of a slot is fenced off by that slot's next
//! holder. An exclusive holder owns every slot: its `begin` counts for every register.
//! `counter` is the sum of the registers (each accepted write adds one to its register).
//!
//! Fenced mode (the default) rejects a write whose (epoch, fence) is below the highest seen in
//! any request on its register (an exclusive `begin` counts for all); an owner's epoch is the
//! one current at its `begin`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(!args.iter().any(|a| a == "--unfenced")),
        Some("client") => {
            let addr = args.get(2).context("usage: witness client ADDR [OPTIONS]")?;
            std::process::exit(client(addr, &ClientOptions::parse(&args[3..])?))
        }
        _ => anyhow::bail!("usage: witness serve [--unfenced] | witness client ADDR [OPTIONS]"),
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
    /// Register number -> value.
    counters: HashMap<u32, u64>,
    epoch: u64,
    /// Register number -> highest (epoch, fence) seen on it.
    highest: HashMap<u32, (u64, u64)>,
    /// The highest (epoch, fence) of an exclusive `begin`: it counts for every register.
    all: (u64, u64),
    owners: HashMap<String, Owner>,
    log: Vec<serde_json::Value>,
}

impl State {
    /// Appends one event; `(fence, epoch)` are the owner's, `value` what was read or written.
    fn log(&mut self, kind: &str, owner: &str, (fence, epoch): (u64, u64), value: u64, ok: bool, text: &str) {
        self.log_at(kind, owner, (fence, epoch), value, ok, text, ("", 0));
    }

    /// As [`State::log`], with the pool fields: the mode of a `begin` and its slot, or the
    /// register of a read or write.
    #[allow(clippy::too_many_arguments)]
    fn log_at(&mut self, kind: &str, owner: &str, (fence, epoch): (u64, u64), value: u64, ok: bool, text: &str, (mode, slot): (&str, u32)) {
        let t = self.start.elapsed().as_millis() as u64;
        let seq = self.log.len() as u64;
        self.log.push(serde_json::json!({
            "seq": seq, "t": t, "kind": kind, "owner": owner, "fence": fence, "epoch": epoch,
            "value": value, "ok": ok, "text": text, "mode": mode, "slot": slot,
        }));
    }

    /// The highest key register `reg` has seen (an exclusive `begin` counts for all).
    fn top(&self, reg: u32) -> (u64, u64) {
        self.highest.get(&reg).copied().unwrap_or((self.epoch, 0)).max(self.all)
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

    fn see(&mut self, reg: u32, key: (u64, u64)) {
        if self.fenced {
            let h = self.highest.entry(reg).or_insert((0, 0));
            *h = (*h).max(key);
        }
    }

    /// One request, handled whole: nothing else runs in between, so the log is a total order.
    /// One arm per request of the protocol (see the module doc), so it is as long as the protocol.
    fn handle(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match (words.first().copied(), words.get(1).copied()) {
            (Some("begin"), Some(owner)) => {
                let (Some(fence), pid) = (num(2), num(3).unwrap_or(0)) else {
                    return "error fence\n".into();
                };
                // `begin NAME FENCE PID [LOCK_OWNER] [mode=M] [slot=K]`: the lock owner, when
                // it is not the name; a pool holder's mode and slot.
                let opt = |key: &str| words.iter().skip(4).find_map(|w| w.strip_prefix(key));
                let text = words.get(4).copied().filter(|w| !w.contains('=')).unwrap_or("");
                let mode = opt("mode=").unwrap_or("");
                let slot = opt("slot=").and_then(|k| k.parse::<u32>().ok()).unwrap_or(0);
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
                // A shared hold, or one lock of several (`lock`): its own register's.
                if mode == "shared" || mode == "lock" {
                    self.see(slot, (epoch, fence));
                } else if self.fenced {
                    // Exclusive (or a plain mutex): every register's.
                    self.all = self.all.max((epoch, fence));
                }
                self.log_at("begin", owner, (fence, epoch), pid, true, text, (mode, slot));
                "ok\n".into()
            }
            (Some("read"), Some(owner)) => {
                let reg = reg_of(&words);
                let o = self.owner(owner);
                self.see(reg, (o.epoch, o.fence));
                let value = self.counters.get(&reg).copied().unwrap_or(0);
                self.log_at("read", owner, (o.fence, o.epoch), value, true, "", ("", reg));
                format!("value {value}\n")
            }
            (Some("write"), Some(owner)) => {
                let (Some(fence), Some(value)) = (num(2), num(3)) else {
                    return "error write\n".into();
                };
                let reg = reg_of(&words);
                let o = self.owner(owner);
                let key = (o.epoch, fence);
                let ok = !self.fenced || key >= self.top(reg);
                if ok {
                    self.counters.insert(reg, value);
                    self.see(reg, key);
                }
                self.log_at("write", owner, (fence, o.epoch), value, ok, "", ("", reg));
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
                self.highest.clear();
                self.all = (self.epoch, 0);
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
            (Some("counter"), _) => format!("value {}\n", self.counters.values().sum::<u64>()),
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

/// The register a read or write names (`reg=K`); 0, the mutex's, without one.
fn reg_of(words: &[&str]) -> u32 {
    words.iter().find_map(|w| w.strip_prefix("reg=")?.parse().ok()).unwrap_or(0)
}

fn serve(fenced: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("witness: cannot start the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("witness: cannot bind a loopback port")?;
        println!("{}", listener.local_addr()?.port());
        let _ = std::io::stdout().flush();
        let state = Rc::new(RefCell::new(State {
            start: Instant::now(),
            fenced,
            counters: HashMap::new(),
            epoch: 0,
            highest: HashMap::new(),
            all: (0, 0),
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
    })
}

/// What one client does (see the options in the module's doc).
#[derive(Debug, Default)]
struct ClientOptions {
    name: Option<String>,
    writes: u32,
    gap_ms: Option<u64>,
    trap_term: bool,
    /// `--mode`: a pool holder, shared or exclusive.
    mode: Option<String>,
    /// `--slots`: the pool's N (an exclusive holder writes every slot's register).
    slots: u32,
    /// `--slot`: the register, instead of `PIPELINE_LOCK_SLOT`.
    slot: Option<u32>,
    /// `--fence-of`: the lock whose fence (in `PIPELINE_LOCK_FENCES`) to write with.
    fence_of: Option<String>,
}

impl ClientOptions {
    fn parse(args: &[String]) -> anyhow::Result<ClientOptions> {
        let mut o = ClientOptions {
            writes: 1,
            ..ClientOptions::default()
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("witness client: {a} needs a value")).cloned();
            match a.as_str() {
                "--as" => o.name = Some(value()?),
                "--writes" => o.writes = value()?.parse().context("witness client: --writes N")?,
                "--gap" => o.gap_ms = Some(value()?.parse().context("witness client: --gap MS")?),
                "--trap-term" => o.trap_term = true,
                "--mode" => o.mode = Some(value()?),
                "--slots" => o.slots = value()?.parse().context("witness client: --slots N")?,
                "--slot" => o.slot = Some(value()?.parse().context("witness client: --slot K")?),
                "--fence-of" => o.fence_of = Some(value()?),
                other => anyhow::bail!("witness client: unknown option {other}"),
            }
        }
        Ok(o)
    }
}

fn client(addr: &str, opts: &ClientOptions) -> i32 {
    let lock_owner = std::env::var("PIPELINE_LOCK_OWNER").unwrap_or_default();
    let owner = opts.name.clone().unwrap_or_else(|| lock_owner.clone());
    let fence = match &opts.fence_of {
        Some(lock) => std::env::var("PIPELINE_LOCK_FENCES")
            .ok()
            .and_then(|all| serde_json::from_str::<serde_json::Value>(&all).ok())
            .and_then(|all| all[lock.as_str()].as_u64())
            .map(|f| f.to_string())
            .unwrap_or_default(),
        None => std::env::var("PIPELINE_LOCK_FENCE").unwrap_or_default(),
    };
    if opts.trap_term {
        // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
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
        let mut extra = if opts.name.is_some() { format!(" {lock_owner}") } else { String::new() };
        // A pool holder's registers: its slot's (shared), or every slot's (exclusive).
        let mut regs = vec![0];
        if let Some(mode) = &opts.mode {
            let slot: u32 = opts
                .slot
                .or_else(|| std::env::var("PIPELINE_LOCK_SLOT").ok().and_then(|s| s.parse().ok()))
                .unwrap_or(0);
            extra.push_str(&format!(" mode={mode} slot={slot}"));
            regs = if mode == "shared" || mode == "lock" {
                vec![slot]
            } else {
                (1..=opts.slots.max(1)).collect()
            };
        }
        ask(format!("begin {owner} {fence} {}{extra}\n", std::process::id()))?;
        let mut all_accepted = true;
        for _ in 0..opts.writes.max(1) {
            for reg in &regs {
                let at = if *reg == 0 { String::new() } else { format!(" reg={reg}") };
                let value: u64 = ask(format!("read {owner}{at}\n"))?.trim_start_matches("value ").parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(opts.gap_ms.unwrap_or_else(|| 10 + rand::random::<u64>() % 41)));
                all_accepted &= ask(format!("write {owner} {fence} {}{at}\n", value + 1))? == "ok";
            }
        }
        ask(format!("end {owner}\n"))?;
        Ok(all_accepted)
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
