//! DESIGN rule 6: a write whose reply is lost may have landed. A store wrapper commits the
//! write and then reports the store as unreachable; the locker must read back and see that
//! it holds (or released) the lock, without a second grant or a fence jump.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use pipeline_lock::store::{self, Hooked, Store, StoreUrl, Write, WriteHook, Written};
use pipeline_lock::{AcquireOptions, Error, Holding, Locker, ReleaseOptions, Released, RenewOptions, Result, Ttl, ci};
use support::{Backend, Env};

/// Forwards everything; the first `drop` writes are carried out but their replies "lost".
#[derive(Debug)]
struct DropReplies {
    inner: Arc<dyn Store>,
    drop: AtomicU32,
}

#[async_trait]
impl WriteHook for DropReplies {
    fn inner(&self) -> &dyn Store {
        &*self.inner
    }

    async fn write(&self, w: Write<'_>) -> Result<Written> {
        let result = self.inner.write(w).await;
        if self.drop.load(Ordering::SeqCst) > 0 {
            self.drop.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Unavailable {
                message: "reply lost (injected)".into(),
                source: None,
            });
        }
        result
    }
}

/// `inner`, with the replies of its first `drop` writes lost.
fn drop_replies(inner: Arc<dyn Store>, drop: u32) -> Locker {
    Locker::new(Arc::new(Hooked(DropReplies {
        inner,
        drop: AtomicU32::new(drop),
    })))
}

async fn locker(e: &Env, drop: u32) -> Locker {
    let b = e.backend;
    let aws = store::aws::AwsOptions {
        region: Some("us-east-1".into()),
        endpoint_url: e.endpoint.clone(),
        force_path_style: true,
    };
    // The library reads credentials from its own environment; tests pass them explicitly.
    let inner = match b {
        Backend::File => store::open(&StoreUrl::parse(&e.store).unwrap(), &aws).await.unwrap(),
        Backend::MotoS3 => Arc::new(support_s3(e, &aws).await),
        _ => Arc::new(support_dynamo(e, &aws).await),
    };
    drop_replies(inner, drop)
}

async fn support_s3(e: &Env, aws: &store::aws::AwsOptions) -> store::s3::S3Store {
    let config = test_config(aws).await;
    let (bucket, prefix) = e.store.trim_start_matches("s3://").split_once('/').unwrap();
    store::s3::S3Store::from_config(bucket, prefix, &config, true)
}

async fn test_config(aws: &store::aws::AwsOptions) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(aws.endpoint_url.clone().unwrap())
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await
}

async fn support_dynamo(e: &Env, aws: &store::aws::AwsOptions) -> store::dynamo::DynamoStore {
    let config = test_config(aws).await;
    store::dynamo::DynamoStore::from_config(e.store.trim_start_matches("dynamodb://"), &config)
}

fn me(owner: &str) -> ci::Identity {
    ci::detect(&|_| None, ci::Scope::Pipeline, Some(owner)).unwrap().unwrap()
}

async fn lost_grant_reply_still_grants_once(e: Env) {
    let locker = locker(&e, 1).await;
    let lock = e.lock("l");
    let grant = locker.acquire(&lock, &me("alice"), &AcquireOptions::default()).await.unwrap();
    // A record created from absent starts its fence above the grant's store ms (AcquiredAt).
    assert!(grant.fence > grant.acquired_at as u64, "{grant:?}");
    let rec = locker.status(&lock).await.unwrap();
    let r = rec.record().unwrap();
    assert_eq!(r.fence, grant.fence);
    assert_eq!(r.token.as_deref(), Some(grant.token.as_str()));
    assert_eq!(r.history.len(), 1, "one grant event, not two: {:?}", r.history);
}

async fn lost_release_reply_still_releases(e: Env) {
    let locker = locker(&e, 0).await;
    let lock = e.lock("l");
    let grant = locker.acquire(&lock, &me("alice"), &AcquireOptions::default()).await.unwrap();
    let flaky = drop_replies(locker.store().clone(), 1);
    let who = Holding::pipeline("alice", None);
    let released = flaky.release(&lock, &who, &ReleaseOptions::default()).await.unwrap();
    assert_eq!(released, Released::Released { fence: grant.fence });
    assert!(locker.status(&lock).await.unwrap().record().unwrap().is_free());
}

async fn lost_renew_reply_is_not_a_lost_lease(e: Env) {
    let locker = locker(&e, 0).await;
    let lock = e.lock("l");
    let grant = locker.acquire(&lock, &me("alice"), &AcquireOptions::default()).await.unwrap();
    let flaky = drop_replies(locker.store().clone(), 1);
    let who = Holding::grant(&grant);
    let renewed = flaky
        .renew(
            &lock,
            &who,
            RenewOptions {
                ttl: Ttl::For(std::time::Duration::from_secs(60)),
                retention: std::time::Duration::from_secs(60),
                in_history: false,
            },
        )
        .await
        .unwrap();
    assert_eq!((renewed.fence, renewed.token), (grant.fence, grant.token));
}

/// Sets the store up outside the async runtime (support blocks on its own), then runs.
fn run<F: std::future::Future<Output = ()>>(b: Backend, name: &str, test: impl FnOnce(Env) -> F) {
    let Some(e) = Env::try_new(b, name) else { return };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test(e));
}

macro_rules! per_store {
    ($($name:ident),*) => {
        mod file { $( #[test] fn $name() { super::run(super::Backend::File, stringify!($name), super::$name) } )* }
        mod dynamodb_local { $( #[test] fn $name() { super::run(super::Backend::DynamoLocal, stringify!($name), super::$name) } )* }
        mod moto_dynamodb { $( #[test] fn $name() { super::run(super::Backend::MotoDynamo, stringify!($name), super::$name) } )* }
        mod moto_s3 { $( #[test] fn $name() { super::run(super::Backend::MotoS3, stringify!($name), super::$name) } )* }
    };
}

per_store!(
    lost_grant_reply_still_grants_once,
    lost_release_reply_still_releases,
    lost_renew_reply_is_not_a_lost_lease
);
