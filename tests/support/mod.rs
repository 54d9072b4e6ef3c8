//! Test support: the real binary against the real local servers that `scripts/test` starts
//! (their URLs come in `PIPELINE_LOCK_TEST_DYNAMODB` / `PIPELINE_LOCK_TEST_MOTO`). Every test
//! uses its own lock names; nothing here changes the test process's environment.
#![allow(dead_code)]

pub mod library;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The stores the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    DynamoLocal,
    MotoDynamo,
    MotoS3,
}

impl Backend {
    /// The store's name in test names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::DynamoLocal => "dynamodb-local",
            Backend::MotoDynamo => "moto-dynamodb",
            Backend::MotoS3 => "moto-s3",
        }
    }

    /// Is there a network (so a fault proxy) between the tool and the store?
    pub fn networked(self) -> bool {
        self != Backend::File
    }
}

pub const TABLE: &str = "pipeline-locks-test";
pub const BUCKET: &str = "pipeline-locks-test";

fn server(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run the suite with scripts/test, which starts the local store servers"))
}

/// The variable that names `backend`'s server, if it needs one.
fn server_var(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::File => None,
        Backend::DynamoLocal => Some("PIPELINE_LOCK_TEST_DYNAMODB"),
        Backend::MotoDynamo | Backend::MotoS3 => Some("PIPELINE_LOCK_TEST_MOTO"),
    }
}

/// Says why a test does not run here, in one line: a bare `cargo test` passes without the
/// store servers, and says how to run everything.
pub fn skip(why: &str) {
    eprintln!("skipped: {why}; `scripts/test` installs and starts the store servers and runs every test");
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    runtime().block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests"))
            .load(),
    )
}

/// A DynamoDB client on `endpoint`, for setting up tables and planting records.
pub fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(endpoint))
}

/// An S3 client on `endpoint` (path style).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(&sdk_config(endpoint)).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates `table` with the tool's key schema and TTL; an existing one is fine (every test
/// process may try). Errors are returned, for callers that wait for a server to warm up.
pub fn try_create_table(endpoint: &str, table: &str) -> Result<(), String> {
    use aws_sdk_dynamodb::types::*;
    let client = dynamo_client(endpoint);
    let result = runtime().block_on(
        client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("LockID")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("LockID")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send(),
    );
    match result {
        Ok(_) => {
            let ttl = TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("ExpiresAt")
                .build()
                .unwrap();
            let _ = runtime().block_on(client.update_time_to_live().table_name(table).time_to_live_specification(ttl).send());
            Ok(())
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
        Err(e) => Err(format!("create table {table}: {e:?}")),
    }
}

/// Creates `bucket`; an existing one is fine.
pub fn try_create_bucket(endpoint: &str, bucket: &str) -> Result<(), String> {
    match runtime().block_on(s3_client(endpoint).create_bucket().bucket(bucket).send()) {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("create bucket {bucket}: {e:?}")),
    }
}

/// Polls `check` every 100 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Creates the test table (idempotent).
pub fn ensure_table(endpoint: &str, table: &str) {
    try_create_table(endpoint, table).unwrap_or_else(|e| panic!("{e}"));
}

/// Creates the test bucket (idempotent).
pub fn ensure_bucket(endpoint: &str, bucket: &str) {
    try_create_bucket(endpoint, bucket).unwrap_or_else(|e| panic!("{e}"));
}

/// One test's view of one store.
pub struct Env {
    pub backend: Backend,
    pub store: String,
    pub endpoint: Option<String>,
    pub dir: Option<PathBuf>,
    pub test: String,
}

pub fn unique(test: &str) -> String {
    format!("{test}-{:08x}", rand::random::<u32>())
}

impl Env {
    /// The test's store, or `None` (with the skip line) when its server is not running here.
    pub fn try_new(backend: Backend, test: &str) -> Option<Env> {
        if let Some(var) = server_var(backend).filter(|v| std::env::var(v).is_err()) {
            skip(&format!("{var} is not set, so there is no {backend:?} server"));
            return None;
        }
        Some(Env::new(backend, test))
    }

    pub fn new(backend: Backend, test: &str) -> Env {
        let test = unique(test);
        match backend {
            Backend::File => {
                let dir = std::env::temp_dir().join(format!("pipeline-lock-tests/{test}"));
                std::fs::create_dir_all(&dir).unwrap();
                Env {
                    backend,
                    store: format!("file://{}", dir.display()),
                    endpoint: None,
                    dir: Some(dir),
                    test,
                }
            }
            Backend::DynamoLocal | Backend::MotoDynamo => {
                let endpoint = server(if backend == Backend::DynamoLocal {
                    "PIPELINE_LOCK_TEST_DYNAMODB"
                } else {
                    "PIPELINE_LOCK_TEST_MOTO"
                });
                ensure_table(&endpoint, TABLE);
                Env {
                    backend,
                    store: format!("dynamodb://{TABLE}"),
                    endpoint: Some(endpoint),
                    dir: None,
                    test,
                }
            }
            Backend::MotoS3 => {
                let endpoint = server("PIPELINE_LOCK_TEST_MOTO");
                ensure_bucket(&endpoint, BUCKET);
                Env {
                    backend,
                    store: format!("s3://{BUCKET}/{test}"),
                    endpoint: Some(endpoint),
                    dir: None,
                    test,
                }
            }
        }
    }

    /// A lock name unique to this test.
    pub fn lock(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.test)
    }

    /// The binary with a clean environment: AWS settings for the local servers, no CI variables.
    pub fn cmd(&self) -> Command {
        self.cmd_with(None)
    }

    /// Like `cmd`, but run under `faketime` with the wall clock shifted (e.g. "+10m").
    pub fn cmd_with(&self, faketime: Option<&str>) -> Command {
        let bin = env!("CARGO_BIN_EXE_pipeline-lock");
        let mut c = match faketime {
            Some(shift) => {
                let mut c = Command::new("faketime");
                c.arg("-f").arg(format!("{shift} x1")).arg(bin);
                c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
            None => Command::new(bin),
        };
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("HOME", std::env::temp_dir());
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
        c.env("AWS_EC2_METADATA_DISABLED", "true");
        c.env("PIPELINE_LOCK_STORE", &self.store);
        if let Some(e) = &self.endpoint {
            c.env("PIPELINE_LOCK_ENDPOINT_URL", e);
        }
        if self.backend == Backend::MotoS3 {
            c.env("PIPELINE_LOCK_S3_FORCE_PATH_STYLE", "true");
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs `args` as `owner` on `lock`.
    pub fn run(&self, owner: &str, lock: &str, args: &[&str]) -> Output {
        self.cmd().args(["--owner", owner, "--lock", lock]).args(args).output().unwrap()
    }

    /// Runs and parses `--output json`.
    pub fn json(&self, owner: &str, lock: &str, args: &[&str]) -> (i32, serde_json::Value) {
        let mut full = args.to_vec();
        full.extend(["--output", "json"]);
        let out = self.run(owner, lock, &full);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), v)
    }

    /// Starts the binary as `owner` on `lock` with `args`, its output piped, without waiting.
    pub fn spawn(&self, owner: &str, lock: &str, args: &[&str]) -> std::process::Child {
        self.cmd()
            .args(["--owner", owner, "--lock", lock])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The lock's record as `status --output json` shows it.
    pub fn record(&self, lock: &str) -> serde_json::Value {
        let (code, v) = self.json("observer", lock, &["status"]);
        assert_eq!(code, 0, "status of {lock}: {v}");
        v["record"].clone()
    }
}

/// Asserts an exit code, printing the process's output when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Instantiates each named test function (taking a `Backend`) once per store.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod file { $( #[test] fn $name() { super::$name($crate::support::Backend::File) } )* }
        mod dynamodb_local { $( #[test] fn $name() { super::$name($crate::support::Backend::DynamoLocal) } )* }
        mod moto_dynamodb { $( #[test] fn $name() { super::$name($crate::support::Backend::MotoDynamo) } )* }
        mod moto_s3 { $( #[test] fn $name() { super::$name($crate::support::Backend::MotoS3) } )* }
    };
}
