//! Library-level suites (`tests/store_contract.rs`, `tests/lost_reply.rs`): the `Store` trait
//! opened in the test process on every store, the in-memory one and the four that the CLI
//! suites use, each with a way to plant a record no tool of ours wrote. A new store is one
//! `StoreKind` variant, its arms in `Subject::open` and `Subject::plant`, and one line in
//! `on_every_library_store!`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use pipeline_lock::store::memory::MemoryStore;
use pipeline_lock::store::{Store, dynamo::DynamoStore, encode_name, file::FileStore, s3::S3Store};

use super::{BUCKET, Backend, Env, TABLE, unique};

/// A store the library-level suites run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    File,
    DynamoLocal,
    MotoDynamo,
    MotoS3,
}

impl StoreKind {
    /// The CLI suites' name for it; the in-memory store has none (no process can share it).
    pub fn backend(self) -> Option<Backend> {
        match self {
            StoreKind::Memory => None,
            StoreKind::File => Some(Backend::File),
            StoreKind::DynamoLocal => Some(Backend::DynamoLocal),
            StoreKind::MotoDynamo => Some(Backend::MotoDynamo),
            StoreKind::MotoS3 => Some(Backend::MotoS3),
        }
    }
}

/// A record no tool of ours wrote, as it looks in each store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Junk {
    /// Not a record at all: cut-off JSON; on DynamoDB an item shaped like a free tombstone
    /// whose Fence is a string and whose Rvn is a number. No fence can be read from it.
    Garbage,
    /// A record's shape with an Owner and this Fence but no Rvn: corrupt, its fence readable.
    NoRvn(u64),
}

/// Where the raw records of a store are, for planting.
enum Raw {
    Memory(Arc<MemoryStore>),
    Dir(PathBuf),
    Dynamo(aws_sdk_dynamodb::Client),
    S3 { client: aws_sdk_s3::Client, prefix: String },
}

/// One test's store, opened at library level.
pub struct Subject {
    pub kind: StoreKind,
    pub store: Arc<dyn Store>,
    /// Unique to this test; every lock name of the test contains it.
    pub test: String,
    raw: Raw,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("kind", &self.kind)
            .field("store", &self.store.url())
            .finish()
    }
}

/// The local servers' AWS configuration: test credentials, us-east-1, the server's endpoint.
async fn aws_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await
}

impl Subject {
    /// Opens `kind` for one test. `env` is the CLI suites' set-up of the same store (its
    /// directory, table or bucket and prefix), made before the runtime started.
    async fn open(kind: StoreKind, name: &str, env: Option<Env>) -> Subject {
        let test = env.as_ref().map_or_else(|| unique(name), |e| e.test.clone());
        let endpoint = env.as_ref().and_then(|e| e.endpoint.clone()).unwrap_or_default();
        let (store, raw): (Arc<dyn Store>, Raw) = match kind {
            StoreKind::Memory => {
                let memory = Arc::new(MemoryStore::in_memory());
                (memory.clone(), Raw::Memory(memory))
            }
            StoreKind::File => {
                let dir = env.as_ref().and_then(|e| e.dir.clone()).expect("the file store's directory");
                (Arc::new(FileStore::open(&dir).unwrap()), Raw::Dir(dir))
            }
            StoreKind::DynamoLocal | StoreKind::MotoDynamo => {
                let config = aws_config(&endpoint).await;
                let client = aws_sdk_dynamodb::Client::new(&config);
                (Arc::new(DynamoStore::from_config(TABLE, &config)), Raw::Dynamo(client))
            }
            StoreKind::MotoS3 => {
                let config = aws_config(&endpoint).await;
                let conf = aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build();
                let client = aws_sdk_s3::Client::from_conf(conf);
                let prefix = test.clone();
                (Arc::new(S3Store::from_config(BUCKET, &prefix, &config, true)), Raw::S3 { client, prefix })
            }
        };
        Subject { kind, store, test, raw }
    }

    /// A lock name unique to this test.
    pub fn lock(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.test)
    }

    /// Puts `junk` where `lock`'s record lives, bypassing the store's conditions and parser.
    pub async fn plant(&self, lock: &str, junk: Junk) {
        let json = match junk {
            Junk::Garbage => b"{\"LockID\": \"x\", \"Fence\": 7, trunc".to_vec(),
            Junk::NoRvn(fence) => serde_json::json!({"LockID": lock, "Owner": "someone", "Fence": fence})
                .to_string()
                .into_bytes(),
        };
        match &self.raw {
            Raw::Memory(memory) => memory.plant(lock, json),
            Raw::Dir(dir) => std::fs::write(dir.join(format!("{}.lock", encode_name(lock))), json).unwrap(),
            Raw::Dynamo(client) => {
                use aws_sdk_dynamodb::types::AttributeValue as A;
                let item = match junk {
                    // Shaped like a free tombstone, but of the wrong types.
                    Junk::Garbage => [("Fence", A::S("seven".into())), ("Rvn", A::N("1".into()))],
                    Junk::NoRvn(fence) => [("Fence", A::N(fence.to_string())), ("Owner", A::S("someone".into()))],
                };
                let item = item
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .chain([("LockID".to_string(), A::S(lock.into()))]);
                client.put_item().table_name(TABLE).set_item(Some(item.collect())).send().await.unwrap();
            }
            Raw::S3 { client, prefix } => {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(format!("{prefix}/{}.lock", encode_name(lock)))
                    .body(json.into())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

/// Runs one async test on `kind`, or prints the skip line when its server is not running here.
/// The store's table or bucket is set up before the test's runtime starts (support blocks on
/// its own runtime).
pub fn run<F: Future<Output = ()>>(kind: StoreKind, name: &str, test: impl FnOnce(Subject) -> F) {
    let env = match kind.backend() {
        None => None,
        Some(b) => match Env::try_new(b, name) {
            Some(e) => Some(e),
            None => return,
        },
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move { test(Subject::open(kind, name, env).await).await });
}

/// Instantiates each named async test function (taking a [`Subject`]) once per store the
/// library can open, the in-memory one included: one module per store, one test per function.
#[macro_export]
macro_rules! on_every_library_store {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[test] fn $name() { $crate::support::library::run($crate::support::library::StoreKind::Memory, stringify!($name), super::$name) } )* }
        mod file { $( #[test] fn $name() { $crate::support::library::run($crate::support::library::StoreKind::File, stringify!($name), super::$name) } )* }
        mod dynamodb_local { $( #[test] fn $name() { $crate::support::library::run($crate::support::library::StoreKind::DynamoLocal, stringify!($name), super::$name) } )* }
        mod moto_dynamodb { $( #[test] fn $name() { $crate::support::library::run($crate::support::library::StoreKind::MotoDynamo, stringify!($name), super::$name) } )* }
        mod moto_s3 { $( #[test] fn $name() { $crate::support::library::run($crate::support::library::StoreKind::MotoS3, stringify!($name), super::$name) } )* }
    };
}
