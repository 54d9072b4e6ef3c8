//! The nemesis: seeded faults, one at a time, each noted in the witness's log so the checker
//! sees it in the same total order as the lock's effects.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::helpers::{Proxy, Witness};
use crate::servers::Server;
use crate::tools::{Rng, descendants, signal};
use crate::workload::{Current, Workload, lock};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGSTOP the holder (and its command) past its lease, then SIGCONT.
    PauseHolder,
    /// SIGSTOP every contender past the lease, then SIGCONT them all at once: a thundering herd
    /// of takers on one stale record.
    PauseAll,
    /// SIGKILL the holder; a new contender takes its place. Its lock must be taken over
    /// within the lease plus slack.
    KillHolder,
    /// SIGKILL any contender (waiting or holding).
    KillAny,
    /// SIGKILL a contender and run its next few runs under faketime (minutes off, x2 or x0.5).
    Faketime,
    ProxyDelay,
    ProxyDropReply,
    ProxyFail,
    ProxyFailAfter,
    /// S3 only: 409 ConditionalRequestConflict.
    ProxyConflict,
    ProxyBlackhole,
    /// Kill the in-memory store server and start it again, empty.
    StoreRestart,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::PauseHolder => "pause-holder",
            Fault::PauseAll => "pause-all",
            Fault::KillHolder => "kill-holder",
            Fault::KillAny => "kill-any",
            Fault::Faketime => "faketime-restart",
            Fault::ProxyDelay => "proxy-delay",
            Fault::ProxyDropReply => "proxy-drop-reply",
            Fault::ProxyFail => "proxy-500",
            Fault::ProxyFailAfter => "proxy-500-after-write",
            Fault::ProxyConflict => "proxy-409",
            Fault::ProxyBlackhole => "proxy-blackhole",
            Fault::StoreRestart => "store-restart",
        }
    }

    /// Every kind that makes sense for a store.
    pub fn all_for(kind: crate::servers::Backend) -> Vec<Fault> {
        let mut v = vec![Fault::PauseHolder, Fault::PauseAll, Fault::KillHolder, Fault::KillAny, Fault::Faketime];
        if kind.networked() {
            v.extend([
                Fault::ProxyDelay,
                Fault::ProxyDropReply,
                Fault::ProxyFail,
                Fault::ProxyFailAfter,
                Fault::ProxyBlackhole,
                Fault::StoreRestart,
            ]);
        }
        if kind == crate::servers::Backend::MotoS3 {
            v.push(Fault::ProxyConflict);
        }
        v
    }
}

/// What the nemesis did.
#[derive(Debug, Default)]
pub struct Log {
    /// Faults injected, by kind.
    pub counts: BTreeMap<&'static str, u32>,
    /// Owners the nemesis killed (their SIGKILL is expected).
    pub killed: BTreeSet<String>,
    /// Harness-ms windows in which the store was down or empty (exit 78 allowed).
    pub restarts: Vec<(u64, u64)>,
    /// One line per fault, for the report.
    pub lines: Vec<String>,
}

pub struct Nemesis<'a> {
    pub rng: Rng,
    pub witness: &'a Witness,
    pub proxy: Option<&'a Proxy>,
    pub server: &'a mut Server,
    pub workload: &'a Workload,
    pub epoch: Instant,
    /// Lease plus the takers' clock margin: how long a stale lease keeps others out.
    pub stale_after: Duration,
    /// Stop as soon as the witness's history shows a violation (the negative control).
    pub stop_on_violation: bool,
    /// A pool's N, for the pool checks while stopping on a violation (0: a plain mutex).
    pub pool_slots: u32,
    pub log: Log,
}

impl Nemesis<'_> {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn sleep_ms(&mut self, lo: u64, hi: u64) {
        std::thread::sleep(Duration::from_millis(self.rng.range(lo, hi)));
    }

    fn note(&mut self, fault: Fault, detail: String) {
        let line = format!("{} {detail}", fault.name());
        self.witness.mark(&line);
        self.log.lines.push(format!("t={:>6}ms {line}", self.now_ms()));
        *self.log.counts.entry(fault.name()).or_default() += 1;
    }

    /// The contender inside its critical section (it holds the lock), if one shows up soon.
    fn holder(&self) -> Option<Current> {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            for (owner, _) in self.witness.open() {
                let slots = lock(&self.workload.slots);
                if let Some(c) = slots.iter().filter_map(|s| s.current.as_ref()).find(|c| c.owner == owner) {
                    return Some(c.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        None
    }

    fn running(&self) -> Vec<Current> {
        lock(&self.workload.slots).iter().filter_map(|s| s.current.clone()).collect()
    }

    /// Stops (or continues) a contender's whole tree: its group, then the command it runs,
    /// which lives in a group of its own.
    fn tree(&self, c: &Current, sig: i32) -> Vec<i32> {
        signal(-c.pgid, sig);
        let below = descendants(c.pgid);
        for &p in &below {
            signal(p, sig);
        }
        below
    }

    pub fn inject(&mut self, fault: Fault) {
        let stale_ms = self.stale_after.as_millis() as u64;
        match fault {
            Fault::PauseHolder => {
                let Some(h) = self.holder() else { return };
                // In a pool, every holder inside: with each slot's holder stale, waiters must
                // take slots over (with a free slot left they would just take that one).
                // Wait a little for a full pool, so that every slot goes stale at once.
                let mut held = Vec::new();
                let full = Instant::now() + Duration::from_secs(2);
                while self.pool_slots > 0 && Instant::now() < full {
                    let open: Vec<String> = self.witness.open().into_iter().map(|(o, _)| o).collect();
                    held = self
                        .running()
                        .into_iter()
                        .filter(|c| c.owner != h.owner && open.contains(&c.owner))
                        .collect();
                    if held.len() + 1 >= self.pool_slots as usize {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                held.insert(0, h);
                let hold = stale_ms + self.rng.range(300, 1500);
                let owners: Vec<&str> = held.iter().map(|c| c.owner.as_str()).collect();
                let owners = owners.join(",");
                self.note(fault, format!("{owners} for {hold}ms"));
                let below: Vec<(Current, Vec<i32>)> = held.iter().map(|c| (c.clone(), self.tree(c, libc::SIGSTOP))).collect();
                std::thread::sleep(Duration::from_millis(hold));
                for (c, below) in below {
                    for p in below {
                        signal(p, libc::SIGCONT);
                    }
                    signal(-c.pgid, libc::SIGCONT);
                }
                self.witness.mark(&format!("resumed {owners}"));
            }
            Fault::PauseAll => {
                // Pause when someone holds the lock, so the herd wakes up to a stale record.
                let holder = self.holder();
                self.workload.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
                let all = self.running();
                let hold = stale_ms + self.rng.range(500, 1500);
                let late = self.rng.range(200, 500);
                let owners: Vec<&str> = all.iter().map(|c| c.owner.as_str()).collect();
                let who = holder
                    .as_ref()
                    .map(|h| format!("; holder {} wakes {late}ms later", h.owner))
                    .unwrap_or_default();
                self.note(fault, format!("{} for {hold}ms{who}", owners.join(",")));
                for c in &all {
                    signal(-c.pgid, libc::SIGSTOP);
                }
                let trees: Vec<(Current, Vec<i32>)> = all.iter().map(|c| (c.clone(), self.tree(c, libc::SIGSTOP))).collect();
                std::thread::sleep(Duration::from_millis(hold));
                // The waiters wake first, together, to a lease that ended long ago; the holder
                // a little later, as a host that was suspended longer would.
                let is_holder = |c: &Current| holder.as_ref().is_some_and(|h| h.owner == c.owner);
                // Over a network every waiter's read is answered before anyone's takeover
                // lands, as after a partition heals: conditional writes must sort them out.
                if let Some(p) = self.proxy {
                    p.command("set delay 150 1.0");
                }
                for late_turn in [false, true] {
                    for (c, below) in trees.iter().filter(|(c, _)| is_holder(c) == late_turn) {
                        for &p in below {
                            signal(p, libc::SIGCONT);
                        }
                        signal(-c.pgid, libc::SIGCONT);
                    }
                    if !late_turn {
                        self.workload.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(late));
                    }
                }
                if let Some(p) = self.proxy {
                    std::thread::sleep(Duration::from_millis(600));
                    p.command("set pass");
                }
                self.witness.mark("resumed all");
            }
            Fault::KillHolder => {
                let Some(h) = self.holder() else { return };
                self.log.killed.insert(h.owner.clone());
                self.note(fault, h.owner.clone());
                signal(-h.pgid, libc::SIGKILL);
                // Nothing else until the takeover window has passed, so the check measures
                // the lock alone.
                std::thread::sleep(self.stale_after + Duration::from_millis(1500));
            }
            Fault::KillAny => {
                let all = self.running();
                if all.is_empty() {
                    return;
                }
                let c = self.rng.pick(&all).clone();
                self.log.killed.insert(c.owner.clone());
                self.note(fault, c.owner.clone());
                signal(-c.pgid, libc::SIGKILL);
            }
            Fault::Faketime => {
                let n = lock(&self.workload.slots).len();
                let slot = self.rng.range(0, n as u64 - 1) as usize;
                let sign = if self.rng.range(0, 1) == 0 { "+" } else { "-" };
                let rate = if self.rng.range(0, 1) == 0 { "x2" } else { "x0.5" };
                let spec = format!("{sign}{}m {rate}", self.rng.range(2, 30));
                let runs = self.rng.range(2, 5) as u32;
                let current = {
                    let mut slots = lock(&self.workload.slots);
                    slots[slot].faketime = Some((spec.clone(), runs));
                    slots[slot].current.clone()
                };
                let who = current.as_ref().map(|c| c.owner.clone()).unwrap_or_else(|| "(between runs)".into());
                self.note(fault, format!("slot c{slot}: killed {who}; next {runs} runs under faketime -f '{spec}'"));
                if let Some(c) = current {
                    self.log.killed.insert(c.owner.clone());
                    signal(-c.pgid, libc::SIGKILL);
                }
                self.sleep_ms(500, 1500);
            }
            Fault::ProxyDelay | Fault::ProxyDropReply | Fault::ProxyFail | Fault::ProxyFailAfter | Fault::ProxyConflict | Fault::ProxyBlackhole => {
                let Some(proxy) = self.proxy else { return };
                let p = |rng: &mut Rng, lo: u64, hi: u64| format!("{:.2}", rng.range(lo, hi) as f64 / 100.0);
                let (mode, window) = match fault {
                    Fault::ProxyDelay => (
                        format!("delay {} {}", self.rng.range(100, 1200), p(&mut self.rng, 50, 100)),
                        self.rng.range(1000, 2500),
                    ),
                    Fault::ProxyDropReply => (format!("drop-reply {}", p(&mut self.rng, 20, 60)), self.rng.range(1000, 2500)),
                    Fault::ProxyFail => (format!("fail {}", p(&mut self.rng, 30, 70)), self.rng.range(1000, 2500)),
                    Fault::ProxyFailAfter => (format!("fail-after {}", p(&mut self.rng, 20, 60)), self.rng.range(1000, 2500)),
                    Fault::ProxyConflict => (format!("conflict {}", p(&mut self.rng, 50, 100)), self.rng.range(1000, 2500)),
                    _ => {
                        // A full partition, or one that catches some requests only (then a
                        // holder's renewal can hang while takers get through).
                        let share = if self.rng.range(0, 1) == 0 {
                            "1.0".to_string()
                        } else {
                            p(&mut self.rng, 30, 60)
                        };
                        (format!("blackhole {share}"), self.rng.range(1000, 3000))
                    }
                };
                self.note(fault, format!("{mode} for {window}ms"));
                proxy.command(&format!("set {mode}"));
                std::thread::sleep(Duration::from_millis(window));
                proxy.command("set pass");
                self.witness.mark("proxy pass");
            }
            Fault::StoreRestart => {
                let Some(proxy) = self.proxy else { return };
                let from = self.now_ms();
                self.note(fault, format!("{} killed; it keeps nothing", self.server.kind.name()));
                self.server.kill();
                self.sleep_ms(200, 1000);
                self.server.start_again();
                proxy.command(&format!("upstream {}", self.server.addr()));
                self.witness
                    .epoch(&format!("{} restarted empty: fences restart", self.server.kind.name()));
                let to = self.now_ms();
                self.log
                    .lines
                    .push(format!("t={to:>6}ms store back after {}ms; fences restart", to - from));
                self.log.restarts.push((from, to));
            }
        }
    }

    fn violated(&self) -> bool {
        if !self.stop_on_violation {
            return false;
        }
        let mut r = crate::checker::Report::default();
        let events = self.witness.dump();
        crate::checker::history(&events, true, &mut r);
        if self.pool_slots > 0 {
            crate::checker::pool(&events, self.pool_slots, &mut r);
        }
        !r.violations.is_empty()
    }

    /// Every kind once in a seeded order, then random kinds until `budget` has passed.
    pub fn run(&mut self, kinds: &[Fault], budget: Duration) {
        let start = Instant::now();
        let mut deck = kinds.to_vec();
        self.rng.shuffle(&mut deck);
        // Let the contenders get going first.
        self.sleep_ms(500, 1000);
        for f in deck {
            self.inject(f);
            self.sleep_ms(200, 600);
            if self.violated() {
                return;
            }
        }
        while start.elapsed() < budget {
            let f = *self.rng.pick(kinds);
            self.inject(f);
            self.sleep_ms(200, 600);
            if self.violated() {
                return;
            }
        }
    }
}
