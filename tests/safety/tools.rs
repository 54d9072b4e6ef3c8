//! Plumbing for the safety runs: the helper binaries (examples), loopback ports, process
//! trees and signals, and a small seeded random generator.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The path of a test tool of `testkit/` (`witness`, `faultproxy`), built on first use: they
/// are a workspace member of their own, so a plain `cargo test` does not build them.
pub fn tool(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", "pipeline-lock-testkit", "--bins", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .status()
            .expect("cannot run cargo to build the safety helpers");
        assert!(status.success(), "building testkit/ (the witness and the fault proxy) failed");
    });
    // target/debug/deps/safety-HASH -> target/debug/NAME
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn has_switch(bin: &Path) -> bool {
    let dir = std::env::temp_dir().join(format!("pipeline-lock-safety-probe-{}", std::process::id()));
    let probe = Command::new(bin)
        .env("PIPELINE_LOCK_TEST_BREAK", "no-such-mode")
        .args(["--store", &format!("file://{}", dir.display()), "--lock", "probe", "status"])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    probe.is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("PIPELINE_LOCK_TEST_BREAK"))
}

/// The binary under test, pinned for this run: a hard link to `CARGO_BIN_EXE_pipeline-lock`,
/// so that a build meanwhile cannot swap it. With `switch`, one that carries the
/// negative-control switch: test builds have it (the self dev-dependency in Cargo.toml), but a
/// plain `cargo build` replaces target/debug/pipeline-lock with a binary without it; then a
/// test build puts the test binary back (it is still built, so this only relinks it).
pub fn pinned_binary(dir: &Path, switch: bool) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_pipeline-lock"));
    if switch && !has_switch(bin) {
        let _ = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--tests", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .status();
    }
    let pinned = dir.join("pipeline-lock");
    let _ = std::fs::remove_file(&pinned);
    if std::fs::hard_link(bin, &pinned).is_err() {
        std::fs::copy(bin, &pinned).expect("copy the binary under test");
    }
    assert!(
        !switch || has_switch(&pinned),
        "{} has no negative-control switch even after a test build",
        bin.display()
    );
    pinned
}

/// A free loopback port (a small race with whoever binds next; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a helper that prints its ports on the first stdout line; returns it and that line.
pub fn spawn_helper(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().expect("spawn helper");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("helper's first line");
    assert!(!line.trim().is_empty(), "helper {cmd:?} printed nothing");
    (child, line.trim().to_string())
}

/// One request/answer line on a fresh connection; answers that run to a line `end` (dump)
/// are read whole.
pub fn ask(port: u16, line: &str) -> std::io::Result<String> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = s.try_clone()?;
    w.write_all(format!("{line}\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    if line == "dump" {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 || l.trim() == "end" {
                break;
            }
            out.push_str(&l);
        }
    } else {
        r.read_line(&mut out)?;
    }
    Ok(out.trim_end().to_string())
}

/// Sends `sig` to one process; errors (already gone) are ignored.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a stale pid at worst hits nothing.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Every descendant of `root` (children first found, then theirs), from /proc.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// splitmix64: a seeded generator small enough that a replay needs nothing but the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            items.swap(i, j);
        }
    }
}

/// Removes what SIGKILLed `faketime` wrappers left in /dev/shm: each makes a semaphore and a
/// shared-memory object named by its PID (`sem.faketime_sem_PID`, `faketime_shm_PID`) and
/// removes them on exit, which a KILL never reaches. A later wrapper that gets the same PID
/// then fails at once ("faketime: sem_open: File exists") without running anything. Only
/// the objects of PIDs that no longer run are removed.
pub fn clear_faketime_leftovers() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix("sem.faketime_sem_")
            .or_else(|| name.strip_prefix("faketime_shm_"))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
