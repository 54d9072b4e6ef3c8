//! DESIGN rule 6: a write whose reply is lost may have landed. A store wrapper commits the
//! write and then reports the store as unreachable; the locker must read back and see that
//! it holds (or released) the lock, without a second grant or a fence jump.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use pipeline_lock::store::{Hooked, Store, Write, WriteHook, Written};
use pipeline_lock::{AcquireOptions, Error, Holding, Locker, ReleaseOptions, Released, RenewOptions, Result, Ttl, ci};
use support::library::Subject;

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

fn me(owner: &str) -> ci::Identity {
    ci::detect(&|_| None, ci::Scope::Pipeline, Some(owner)).unwrap().unwrap()
}

async fn lost_grant_reply_still_grants_once(s: Subject) {
    let locker = drop_replies(s.store.clone(), 1);
    let lock = s.lock("l");
    let grant = locker.acquire(&lock, &me("alice"), &AcquireOptions::default()).await.unwrap();
    // A record created from absent starts its fence above the grant's store ms (AcquiredAt).
    assert!(grant.fence > grant.acquired_at as u64, "{grant:?}");
    let rec = locker.status(&lock).await.unwrap();
    let r = rec.record().unwrap();
    assert_eq!(r.fence, grant.fence);
    assert_eq!(r.token.as_deref(), Some(grant.token.as_str()));
    assert_eq!(r.history.len(), 1, "one grant event, not two: {:?}", r.history);
}

async fn lost_release_reply_still_releases(s: Subject) {
    let locker = Locker::new(s.store.clone());
    let lock = s.lock("l");
    let grant = locker.acquire(&lock, &me("alice"), &AcquireOptions::default()).await.unwrap();
    let flaky = drop_replies(locker.store().clone(), 1);
    let who = Holding::pipeline("alice", None);
    let released = flaky.release(&lock, &who, &ReleaseOptions::default()).await.unwrap();
    assert_eq!(released, Released::Released { fence: grant.fence });
    assert!(locker.status(&lock).await.unwrap().record().unwrap().is_free());
}

async fn lost_renew_reply_is_not_a_lost_lease(s: Subject) {
    let locker = Locker::new(s.store.clone());
    let lock = s.lock("l");
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

on_every_library_store!(
    lost_grant_reply_still_grants_once,
    lost_release_reply_still_releases,
    lost_renew_reply_is_not_a_lost_lease
);
