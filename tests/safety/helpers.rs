//! Handles on the two helper processes: the witness and the fault proxy (see their sources
//! in `testkit/src/bin/`). Both are never paused and never run under `faketime`.

use std::process::{Child, Command};

use crate::checker::Event;
use crate::tools::{ask, spawn_helper, tool};

pub struct Witness {
    child: Child,
    pub port: u16,
}

impl Witness {
    pub fn start(fenced: bool) -> Witness {
        let mut cmd = Command::new(tool("witness"));
        cmd.arg("serve");
        if !fenced {
            cmd.arg("--unfenced");
        }
        let (child, line) = spawn_helper(&mut cmd);
        Witness {
            child,
            port: line.parse().expect("witness port"),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn ask(&self, line: &str) -> String {
        ask(self.port, line).unwrap_or_else(|e| panic!("witness {line:?}: {e}"))
    }

    /// A nemesis note in the witness's total order.
    pub fn mark(&self, text: &str) {
        self.ask(&format!("mark {text}"));
    }

    /// The store lost its data: fences restart.
    pub fn epoch(&self, text: &str) {
        self.ask(&format!("epoch {text}"));
    }

    /// Owners inside begin..end, newest first, with their client's pid.
    pub fn open(&self) -> Vec<(String, i32)> {
        let line = self.ask("open");
        line.split_whitespace()
            .skip(1)
            // `c1-r2@1`: one of the clients of a multi-lock holder, named for its lock.
            .filter_map(|w| w.rsplit_once(':').map(|(o, p)| (run_of(o).to_string(), p.parse().unwrap_or(0))))
            .collect()
    }

    pub fn counter(&self) -> u64 {
        self.ask("counter").trim_start_matches("value ").parse().unwrap_or(0)
    }

    pub fn dump(&self) -> Vec<Event> {
        self.ask("dump")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("witness log line {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Proxy {
    child: Child,
    pub port: u16,
    control: u16,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        Proxy::start_on(upstream, 0)
    }

    /// A proxy on `port` (0: any), e.g. again on the port of one that was stopped.
    pub fn start_on(upstream: &str, port: u16) -> Proxy {
        let (child, line) = spawn_helper(Command::new(tool("faultproxy")).arg(upstream).arg(port.to_string()));
        let mut ports = line.split_whitespace().map(|p| p.parse::<u16>().expect("proxy port"));
        Proxy {
            child,
            port: ports.next().unwrap(),
            control: ports.next().unwrap(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn command(&self, line: &str) {
        let reply = ask(self.control, line).unwrap_or_else(|e| panic!("faultproxy {line:?}: {e}"));
        assert_eq!(reply, "ok", "faultproxy {line:?}");
    }

    /// Requests by what was done to them.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&ask(self.control, "stats").unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run a witness name belongs to: a multi-lock holder's clients are `RUN@LOCK`.
pub fn run_of(witness_name: &str) -> &str {
    witness_name.split('@').next().unwrap_or(witness_name)
}
