//! The workload: N contender threads, each running `pipeline-lock run` around the witness
//! client again and again, each run under a new owner, until it has its iterations and the
//! nemesis is done. A run the nemesis killed is followed by a new one: a new contender.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{CLOCK_MARGIN_MS, KILL_GRACE_MS};
use crate::tools::Rng;

/// How each contender runs the tool.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub store: String,
    /// The fault proxy's URL (AWS stores).
    pub endpoint: Option<String>,
    pub s3: bool,
    pub lock: String,
    pub ttl_ms: u64,
    pub heartbeat_ms: u64,
    pub retry_ms: u64,
    pub witness: String,
    pub witness_bin: String,
    /// `pipeline-lock`, pinned for the run (see `tools::pinned_binary`).
    pub bin: String,
    /// `PIPELINE_LOCK_TEST_BREAK`, for the negative control.
    pub broken: Option<String>,
    /// `--queue`: fifo or none.
    pub queue: String,
    /// The queue's prune window floor (a hidden test option). A killed waiter keeps its place
    /// until pruned, by default for 30 s; with short leases that would stall every run.
    pub prune_floor: String,
    /// A pool: `--slots N` for every contender (0: a plain mutex, no `--slots`).
    pub slots: u32,
    /// In a pool, contenders `0..exclusive` take exclusive holds and the others `--shared`.
    pub exclusive: usize,
    /// Several locks at once: these two locks (empty: one lock, `lock`). Contender `id % 3`
    /// 0 takes both (`--lock A --lock B`), 1 only A, 2 only B. Each lock is a witness register
    /// (slot 1, 2): a holder of both runs one client per lock.
    pub multi: Vec<String>,
}

/// The locks contender `id` takes, with each one's witness register.
fn locks_of(inv: &Invocation, id: usize) -> Vec<(&str, u32)> {
    match inv.multi.as_slice() {
        [a, b] => match id % 3 {
            0 => vec![(a.as_str(), 1), (b.as_str(), 2)],
            1 => vec![(a.as_str(), 1)],
            _ => vec![(b.as_str(), 2)],
        },
        _ => vec![(inv.lock.as_str(), 0)],
    }
}

/// The guarded command of a multi-lock contender: one witness client per lock, each with its
/// lock's fence, together; the exit code is the first failure's.
fn multi_command(inv: &Invocation, locks: &[(&str, u32)], gap: u64) -> Vec<String> {
    let clients: Vec<String> = locks
        .iter()
        .map(|(lock, reg)| {
            let fence = if locks.len() > 1 {
                format!("--fence-of '{lock}'")
            } else {
                String::new()
            };
            format!(
                "'{}' client '{}' --as \"$PIPELINE_LOCK_OWNER@{reg}\" --mode lock --slots 2 --slot {reg} --gap {gap} {fence}",
                inv.witness_bin, inv.witness
            )
        })
        .collect();
    let script = match clients.as_slice() {
        [one] => one.clone(),
        [a, b] => format!("{a} & first=$!; {b}; second=$?; wait $first; first=$?; [ $first -ne 0 ] && exit $first; exit $second"),
        _ => unreachable!("a contender takes one lock or two"),
    };
    vec!["sh".into(), "-c".into(), script]
}

/// The run in progress in one slot.
#[derive(Debug, Clone)]
pub struct Current {
    pub owner: String,
    /// The root process (`pipeline-lock`, or `faketime` around it), leader of its own group.
    pub pgid: i32,
}

#[derive(Debug, Default)]
pub struct Slot {
    pub current: Option<Current>,
    /// `faketime -f` spec and how many more runs use it.
    pub faketime: Option<(String, u32)>,
    pub successes: u32,
    pub finished: bool,
}

/// One `pipeline-lock run` and how it ended.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub slot: usize,
    pub owner: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stderr: String,
    /// The full stderr said "panicked".
    pub panicked: bool,
    /// The full stderr (kept in the run's files, `stderr/OWNER.txt`).
    pub full: String,
    pub faketime: Option<String>,
}

pub struct Workload {
    pub slots: Arc<Mutex<Vec<Slot>>>,
    pub records: Arc<Mutex<Vec<RunRecord>>>,
    pub nemesis_done: Arc<AtomicBool>,
    /// While set, no contender starts a run: with every running one SIGSTOPped, the whole
    /// workload stands still (a paused host).
    pub frozen: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Workload {
    pub fn start(inv: Invocation, contenders: usize, iterations: u32, epoch: Instant, deadline: Instant, seed: u64) -> Workload {
        let slots = Arc::new(Mutex::new((0..contenders).map(|_| Slot::default()).collect::<Vec<_>>()));
        let records = Arc::new(Mutex::new(Vec::new()));
        let nemesis_done = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let threads = (0..contenders)
            .map(|id| {
                let (inv, slots, records) = (inv.clone(), slots.clone(), records.clone());
                let (done, frozen) = (nemesis_done.clone(), frozen.clone());
                let mut rng = Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
                std::thread::spawn(move || contend(id, &inv, iterations, &slots, &records, (&done, &frozen), epoch, deadline, &mut rng))
            })
            .collect();
        Workload {
            slots,
            records,
            nemesis_done,
            frozen,
            threads,
        }
    }

    /// Waits for every contender (they stop by themselves at the deadline).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn contend(
    id: usize,
    inv: &Invocation,
    iterations: u32,
    slots: &Mutex<Vec<Slot>>,
    records: &Mutex<Vec<RunRecord>>,
    (nemesis_done, frozen): (&AtomicBool, &AtomicBool),
    epoch: Instant,
    deadline: Instant,
    rng: &mut Rng,
) {
    let ms = |i: Instant| i.duration_since(epoch).as_millis() as u64;
    for run in 1.. {
        while frozen.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let faketime = {
            let mut s = lock(slots);
            let slot = &mut s[id];
            if slot.successes >= iterations && nemesis_done.load(Ordering::SeqCst) {
                slot.finished = true;
                return;
            }
            if Instant::now() > deadline {
                return;
            }
            let ft = slot.faketime.as_ref().map(|(spec, _)| spec.clone());
            if let Some((_, left)) = &mut slot.faketime {
                *left -= 1;
                if *left == 0 {
                    slot.faketime = None;
                }
            }
            ft
        };
        let owner = format!("c{id}-r{run}");
        let bin = inv.bin.as_str();
        let mut cmd = match &faketime {
            Some(spec) => {
                let mut c = Command::new("faketime");
                c.args(["-f", spec]).arg(bin);
                c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("PIPELINE_LOCK_PRUNE_FLOOR", &inv.prune_floor);
        cmd.env("PIPELINE_LOCK_QUEUE", &inv.queue);
        // `PIPELINE_LOCK_SAFETY_LOG=debug`: the contenders' own logs, in the run's files.
        if let Ok(level) = std::env::var("PIPELINE_LOCK_SAFETY_LOG") {
            cmd.env("PIPELINE_LOCK_LOG", format!("pipeline_lock={level}"));
        }
        if let Some(b) = &inv.broken {
            cmd.env("PIPELINE_LOCK_TEST_BREAK", b);
        }
        cmd.args(["--store", &inv.store]);
        if let Some(e) = &inv.endpoint {
            cmd.args(["--endpoint-url", e]);
        }
        if inv.s3 {
            cmd.arg("--s3-force-path-style");
        }
        let locks = locks_of(inv, id);
        cmd.args(["--owner", &owner]);
        for (lock, _) in &locks {
            cmd.args(["--lock", lock]);
        }
        cmd.arg("run");
        let shared = id >= inv.exclusive;
        if inv.slots > 0 {
            cmd.args(["--slots", &inv.slots.to_string()]);
            if shared {
                cmd.arg("--shared");
            }
        }
        cmd.args(["--ttl", &format!("{}ms", inv.ttl_ms), "--heartbeat", &format!("{}ms", inv.heartbeat_ms)])
            .args(["--retry-interval", &format!("{}ms", inv.retry_ms)])
            .args([
                "--clock-margin",
                &format!("{CLOCK_MARGIN_MS}ms"),
                "--kill-grace",
                &format!("{KILL_GRACE_MS}ms"),
                "--",
            ]);
        if !inv.multi.is_empty() {
            cmd.args(multi_command(inv, &locks, rng.range(50, 250)));
        } else {
            cmd.args([&inv.witness_bin, "client", &inv.witness]);
        }
        if inv.slots > 0 {
            let mode = if shared { "shared" } else { "exclusive" };
            cmd.args(["--mode", mode, "--slots", &inv.slots.to_string()]);
            // Inside for a while (each write), so that the pool is often full: a paused
            // holder's slot is then taken over rather than left for a free one.
            cmd.args(["--gap", &rng.range(50, 250).to_string()]);
        }
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let start = Instant::now();
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot start {bin}: {e}"),
        };
        lock(slots)[id].current = Some(Current {
            owner: owner.clone(),
            pgid: child.id() as i32,
        });
        let out = child.wait_with_output().expect("wait for pipeline-lock");
        let end = Instant::now();
        let ok = out.status.success();
        if faketime.is_some() && !ok && String::from_utf8_lossy(&out.stderr).starts_with("faketime: sem_open") {
            // The faketime wrapper could not start (an earlier, killed wrapper's objects under
            // a PID now reused): pipeline-lock never ran. Clear the leftovers and go again.
            lock(slots)[id].current = None;
            crate::tools::clear_faketime_leftovers();
            continue;
        }
        {
            let mut s = lock(slots);
            s[id].current = None;
            if ok {
                s[id].successes += 1;
            }
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        lock(records).push(RunRecord {
            slot: id,
            owner,
            start_ms: ms(start),
            end_ms: ms(end),
            code: out.status.code(),
            signal: out.status.signal(),
            stderr: tail,
            panicked: stderr.contains("panicked"),
            full: stderr.to_string(),
            faketime,
        });
        if !ok {
            // A failed run (store down, lease lost, killed) backs off a little, as CI would.
            std::thread::sleep(Duration::from_millis(rng.range(50, 250)));
        }
    }
}
