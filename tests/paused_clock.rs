//! The waiting loop, takeover timing, the queue's pruning and the heartbeat under tokio's
//! paused clock, on the in-memory store (the real whole-record engine): minutes of lock time
//! in milliseconds of real time. Store trouble is injected by a wrapper (`Flaky`); the store
//! behaviour itself is never mocked. The real-process tests prove the same on real stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pipeline_lock::ci::{CiSystem, Identity};
use pipeline_lock::clock::StoreClock;
use pipeline_lock::locker::How;
use pipeline_lock::record::{Holder, Record};
use pipeline_lock::store::memory::MemoryStore;
use pipeline_lock::store::{Check, ListQuery, Observed, Page, Store, WaiterUpdate, Write, Written};
use pipeline_lock::{AcquireOptions, Error, Holding, LeaseState, Locker, Occupant, ReleaseOptions, RenewOptions, Ttl, Wait};
use tokio::time::Instant;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn who(owner: &str) -> Identity {
    Identity {
        owner: owner.into(),
        holder: Holder::default(),
        system: CiSystem::Local,
        project: None,
        server_host: None,
    }
}

/// A 60 s lease, 1 s polls, a 2 s clock margin.
fn opts() -> AcquireOptions {
    AcquireOptions {
        ttl: Some(secs(60)),
        retry_interval: secs(1),
        clock_margin: secs(2),
        ..AcquireOptions::default()
    }
}

/// A store whose every request fails while `failing` is set: unreachable, as a partition
/// looks to the waiting loop and the heartbeat.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Store>,
    failing: AtomicBool,
}

impl Flaky {
    fn over(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            failing: AtomicBool::new(false),
        })
    }

    fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::Relaxed);
    }

    fn check(&self) -> pipeline_lock::Result<()> {
        match self.failing.load(Ordering::Relaxed) {
            true => Err(Error::Unavailable {
                message: "injected: the store is unreachable".into(),
                source: None,
            }),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl Store for Flaky {
    fn url(&self) -> String {
        self.inner.url()
    }

    fn clock(&self) -> &StoreClock {
        self.inner.clock()
    }

    fn requests(&self) -> u64 {
        self.inner.requests()
    }

    async fn read(&self, lock: &str, consistent: bool) -> pipeline_lock::Result<Observed> {
        self.check()?;
        self.inner.read(lock, consistent).await
    }

    async fn write(&self, write: Write<'_>) -> pipeline_lock::Result<Written> {
        self.check()?;
        self.inner.write(write).await
    }

    async fn update_waiters(&self, update: WaiterUpdate<'_>) -> pipeline_lock::Result<Option<Observed>> {
        self.check()?;
        self.inner.update_waiters(update).await
    }

    async fn list_page(&self, query: &ListQuery<'_>) -> pipeline_lock::Result<Page> {
        self.check()?;
        self.inner.list_page(query).await
    }

    async fn doctor(&self) -> Vec<Check> {
        self.inner.doctor().await
    }
}

fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::in_memory())
}

async fn record(store: &dyn Store, lock: &str) -> Record {
    store.read(lock, true).await.unwrap().record().cloned().expect("a valid record")
}

/// Sleeps until store time `at` (unix ms).
async fn until_store_ms(store: &dyn Store, at: i64) {
    let now = store.clock().now_ms();
    tokio::time::sleep(ms((at - now).max(0) as u64)).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_at_its_wait_with_exit_75() {
    let locker = Locker::new(memory());
    locker.acquire("l", &who("a"), &opts()).await.unwrap();
    let t0 = Instant::now();
    let wait = AcquireOptions {
        wait: Wait::For(secs(10)),
        ..opts()
    };
    let err = locker.acquire("l", &who("b"), &wait).await.unwrap_err();
    let waited = t0.elapsed();
    assert!(matches!(err, Error::TimedOut(_)), "{err}");
    assert_eq!(err.exit_code(), 75);
    assert!(waited >= secs(10) && waited < secs(10) + ms(100), "gave up after {waited:?}");
    // It left the queue on the way out.
    assert!(record(locker.store().as_ref(), "l").await.waiters.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_after_max_retries_polls() {
    let locker = Locker::new(memory());
    locker.acquire("l", &who("a"), &opts()).await.unwrap();
    let t0 = Instant::now();
    let tries = AcquireOptions {
        max_retries: Some(3),
        ..opts()
    };
    let err = locker.acquire("l", &who("b"), &tries).await.unwrap_err();
    assert_eq!(err.exit_code(), 75, "{err}");
    assert!(err.to_string().contains("and 3 polls"), "{err}");
    // Three pauses of 0.6 to 1.1 retry intervals.
    let waited = t0.elapsed();
    assert!(waited >= ms(1800) && waited <= ms(3300), "gave up after {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_takeover_comes_right_after_the_lease_end_plus_the_margin_and_not_before() {
    let locker = Locker::new(memory());
    let short = AcquireOptions {
        ttl: Some(secs(10)),
        ..opts()
    };
    let t0 = Instant::now();
    locker.acquire("l", &who("a"), &short).await.unwrap();
    // Lease end 10 s + margin 2 s: a waiter that gives up just before gets nothing.
    let almost = AcquireOptions {
        wait: Wait::For(ms(11_900)),
        ..opts()
    };
    let err = locker.acquire("l", &who("c"), &almost).await.unwrap_err();
    assert_eq!(err.exit_code(), 75, "{err}");
    let grant = locker.acquire("l", &who("b"), &opts()).await.unwrap();
    let at = t0.elapsed();
    assert!(matches!(&grant.how, How::TookOver { from, .. } if from == "a"), "{:?}", grant.how);
    // The head wakes up right when the takeover becomes possible (plus 50 ms).
    assert!(at > secs(12) && at < ms(12_200), "taken over at {at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_rides_out_store_failures_until_its_wait() {
    let memory = memory();
    let flaky = Flaky::over(memory.clone());
    let holder = Locker::new(memory.clone());
    let first = holder.acquire("l", &who("a"), &opts()).await.unwrap();
    let waiter = Locker::new(flaky.clone());

    // A blip of 20 s inside a 60 s wait: ridden out, and the lock is ours once released.
    let t0 = Instant::now();
    let wait = AcquireOptions {
        wait: Wait::For(secs(60)),
        ..opts()
    };
    let task = tokio::spawn({
        let (waiter, wait) = (waiter.clone(), wait.clone());
        async move { waiter.acquire("l", &who("b"), &wait).await }
    });
    tokio::time::sleep(secs(2)).await;
    flaky.fail(true);
    tokio::time::sleep(secs(20)).await;
    flaky.fail(false);
    tokio::time::sleep(secs(5)).await;
    holder.release("l", &Holding::grant(&first), &ReleaseOptions::default()).await.unwrap();
    let grant = task.await.unwrap().unwrap();
    assert_eq!(grant.how, How::Acquired);
    // Failed tries back off 2, 4, 8, 16 s (each +-25%) from the first failure (by 3.1 s):
    // the first read after the blip comes by 41 s, and the lock is free by then.
    let at = t0.elapsed();
    assert!(at >= secs(27) && at <= ms(41_000), "granted after {at:?}");

    // Failing for good: given up at the wait, as unreachable (69), not a moment before.
    let t1 = Instant::now();
    let task = tokio::spawn({
        let wait = AcquireOptions {
            wait: Wait::For(secs(30)),
            ..opts()
        };
        async move { waiter.acquire("l", &who("c"), &wait).await }
    });
    tokio::time::sleep(secs(1)).await;
    flaky.fail(true);
    let err = task.await.unwrap().unwrap_err();
    let waited = t1.elapsed();
    assert_eq!(err.exit_code(), 69, "{err}");
    assert!(err.to_string().contains("kept failing"), "{err}");
    assert!(waited >= secs(30) && waited < secs(30) + ms(100), "gave up after {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn an_entry_unseen_for_its_window_is_pruned_by_the_next_waiter() {
    let store = memory();
    let locker = Locker::new(store.clone());
    locker.acquire("l", &who("a"), &opts()).await.unwrap();
    // 1 s polls and a 3 s floor: entries live 3 s unseen.
    let queued = AcquireOptions {
        ttl: Some(secs(3600)),
        prune_floor: secs(3),
        ..opts()
    };
    let spawn = |owner: &'static str| {
        let (locker, queued) = (locker.clone(), queued.clone());
        tokio::spawn(async move { locker.acquire("l", &who(owner), &queued).await })
    };
    let gone = spawn("gone");
    let entry = loop {
        tokio::time::sleep(ms(10)).await;
        if let Some(w) = record(store.as_ref(), "l").await.waiters.values().find(|w| w.owner == "gone") {
            break w.clone();
        }
    };
    // It dies without leaving the queue (a cancelled job), right after its entry was written.
    gone.abort();
    let stays = spawn("stays");
    until_store_ms(store.as_ref(), entry.seen_at + 2_900).await;
    let owners = |r: &Record| r.waiters.values().map(|w| w.owner.clone()).collect::<Vec<_>>();
    let r = record(store.as_ref(), "l").await;
    assert!(owners(&r).contains(&"gone".to_string()), "live for its window: {:?}", owners(&r));
    // Pruned by the first refresh after the window: at most half a window plus a poll later.
    until_store_ms(store.as_ref(), entry.seen_at + 3_000 + 1_500 + 1_100 + 10).await;
    let r = record(store.as_ref(), "l").await;
    assert_eq!(owners(&r), vec!["stays".to_string()]);
    stays.abort();
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_the_lease_and_calls_it_lost_at_term_time_when_renewals_fail() {
    let flaky = Flaky::over(memory());
    let locker = Locker::new(flaky.clone());
    // 30 s lease, 2 s margin, 10 s grace: TERM 18 s after the last renewal, heartbeats of 9 s.
    let leased = AcquireOptions {
        ttl: Some(secs(30)),
        ..opts()
    };
    let grace = secs(10);
    let lease = locker.lease("l", &who("a"), &leased, None, grace).await.unwrap();
    tokio::time::sleep(secs(300)).await;
    assert!(lease.is_held(), "{:?}", lease.state());
    let r = record(flaky.as_ref(), "l").await;
    let left = r.lease_expires_at.unwrap() - flaky.clock().now_ms();
    assert!(left > 20_000, "renewed: {left} ms left");

    flaky.fail(true);
    let failed = Instant::now();
    let lost = lease.lost().await;
    let at = Instant::now();
    assert!(matches!(lease.state(), LeaseState::Unknown(_)), "{:?}", lease.state());
    assert_eq!(lost.exit_code(), 76, "{lost}");
    let kill = lease.kill_by().unwrap();
    let term = kill - grace;
    // Retries stop at TERM time, and the one due then gets no late-answer allowance (that is
    // for a renewal sent after TERM time by a paused process): the loss is called at TERM
    // time, a grace before the command must be dead (the lease end minus the margin).
    assert!(
        at >= term && at <= term + Duration::from_millis(10),
        "lost {:?} after TERM time",
        at - term
    );
    assert!(at < kill, "lost {:?} before the kill deadline", kill - at);
    assert!(at - failed <= secs(18) + secs(1), "lost {:?} after the failures began", at - failed);
    // In doubt is not lost: once the store answers again, the release still gives it back.
    flaky.fail(false);
    let mut lease = lease;
    lease.release().await.unwrap();
    assert!(record(flaky.as_ref(), "l").await.is_free(), "a lease in doubt is still released");
}

#[tokio::test(start_paused = true)]
async fn errors_name_the_holder_in_fields_a_caller_can_match() {
    let locker = Locker::new(memory());
    let a = locker.acquire("l", &who("a"), &opts()).await.unwrap();
    let no_wait = AcquireOptions { wait: Wait::No, ..opts() };
    match locker.acquire("l", &who("b"), &no_wait).await.unwrap_err() {
        Error::Held { occupant, .. } => {
            assert_eq!(
                occupant,
                Occupant {
                    lock: "l".into(),
                    owner: Some("a".into()),
                    fence: Some(a.fence)
                }
            )
        }
        other => panic!("expected Held, got {other:?}"),
    }
    let force = AcquireOptions {
        force: Some("stuck".into()),
        ..opts()
    };
    let b = locker.acquire("l", &who("b"), &force).await.unwrap();
    assert!(b.fence > a.fence);
    let renew = RenewOptions {
        ttl: Ttl::For(secs(60)),
        retention: secs(60),
        in_history: false,
    };
    match locker.renew("l", &Holding::grant(&a), renew).await.unwrap_err() {
        Error::LeaseLost { occupant, message } => {
            assert_eq!(occupant.owner.as_deref(), Some("b"), "{message}");
            assert_eq!(occupant.fence, Some(b.fence), "{message}");
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// A pool of 2: options for a shared hold of `ttl`.
fn pool_hold(ttl: u64) -> AcquireOptions {
    AcquireOptions {
        ttl: Some(secs(ttl)),
        slots: 2,
        shared: true,
        ..opts()
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_shared_holder_is_taken_over_at_its_lease_end_plus_the_margin_and_alone() {
    let locker = Locker::new(memory());
    let t0 = Instant::now();
    let short = locker.acquire("pool", &who("short"), &pool_hold(10)).await.unwrap();
    let long = locker.acquire("pool", &who("long"), &pool_hold(600)).await.unwrap();
    assert_eq!((short.slot, long.slot), (1, 2));
    let before = record(locker.store().as_ref(), "pool").await;
    let almost = AcquireOptions {
        wait: Wait::For(ms(11_900)),
        ..pool_hold(60)
    };
    assert_eq!(locker.acquire("pool", &who("early"), &almost).await.unwrap_err().exit_code(), 75);
    let taker = locker.acquire("pool", &who("taker"), &pool_hold(60)).await.unwrap();
    let at = t0.elapsed();
    assert!(at > secs(12) && at < ms(12_200), "taken over at {at:?}");
    assert_eq!(taker.slot, short.slot);
    assert!(matches!(&taker.how, How::TookOver { from, .. } if from == "short"), "{:?}", taker.how);
    assert!(taker.fence > long.fence);
    let after = record(locker.store().as_ref(), "pool").await;
    assert_eq!(after.hold(2), before.hold(2), "the live holder's hold is untouched");
    // The one taken over is told so; the live one renews.
    let renew = RenewOptions {
        ttl: Ttl::For(secs(60)),
        retention: secs(60),
        in_history: false,
    };
    let lost = locker.renew("pool", &Holding::grant(&short), renew).await.unwrap_err();
    assert!(matches!(lost, Error::LeaseLost { ref occupant, .. } if occupant.lock == "pool"), "{lost}");
    assert_eq!(locker.renew("pool", &Holding::grant(&long), renew).await.unwrap().fence, long.fence);
}

#[tokio::test(start_paused = true)]
async fn a_shared_holds_heartbeat_keeps_its_slot_while_the_pool_turns_over() {
    let locker = Locker::new(memory());
    let lease = locker.lease("pool", &who("steady"), &pool_hold(30), None, secs(10)).await.unwrap();
    assert!(lease.grant().shared);
    // Ten minutes of others coming and going through the other slot.
    for i in 0..20 {
        let g = locker.acquire("pool", &who(&format!("visitor{i}")), &pool_hold(30)).await.unwrap();
        assert_eq!(g.slot, 3 - lease.grant().slot, "a visitor gets the other slot");
        tokio::time::sleep(secs(30)).await;
        locker.release("pool", &Holding::grant(&g), &ReleaseOptions::default()).await.unwrap();
    }
    assert!(lease.is_held(), "{:?}", lease.state());
    let r = record(locker.store().as_ref(), "pool").await;
    let hold = r.hold(lease.grant().slot).expect("still in its slot");
    assert_eq!((hold.token.as_str(), hold.fence), (lease.grant().token.as_str(), lease.grant().fence));
    assert!(
        hold.lease_expires_at.unwrap() - locker.store().clock().now_ms() > 10_000,
        "renewed by the heartbeat"
    );
}
