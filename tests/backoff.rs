//! `--backoff` under tokio's paused clock, on the in-memory store (the real whole-record
//! engine): the requests of each waiter are counted minute by minute. A backed-off waiter
//! stays within the queue's budget (at most 40 requests a waiter-minute at the default 2 s
//! interval) from its first minute and falls far below it; it keeps its place in the queue
//! (a waiter polling every 2 s never prunes it) and still gets the lock first when it is free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pipeline_lock::backoff::Backoff;
use pipeline_lock::ci::{CiSystem, Identity};
use pipeline_lock::clock::StoreClock;
use pipeline_lock::record::Holder;
use pipeline_lock::store::memory::MemoryStore;
use pipeline_lock::store::{Check, ListQuery, Observed, Page, Store, WaiterUpdate, Write, Written};
use pipeline_lock::{AcquireOptions, Holding, Locker, ReleaseOptions};

fn who(owner: &str) -> Identity {
    Identity {
        owner: owner.into(),
        holder: Holder::default(),
        system: CiSystem::Local,
        project: None,
        server_host: None,
    }
}

/// One waiter's view of a shared store: the store's own request counter, as much of it as
/// this waiter's calls moved (the in-memory store answers without yielding, so the difference
/// around one call is that call's).
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn Store>,
    mine: AtomicU64,
}

impl Counted {
    fn over(inner: Arc<dyn Store>) -> Arc<Counted> {
        Arc::new(Counted {
            inner,
            mine: AtomicU64::new(0),
        })
    }

    fn mine(&self) -> u64 {
        self.mine.load(Ordering::Relaxed)
    }

    fn count<T>(&self, before: u64, out: T) -> T {
        self.mine.fetch_add(self.inner.requests() - before, Ordering::Relaxed);
        out
    }
}

#[async_trait]
impl Store for Counted {
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
        let before = self.inner.requests();
        let out = self.inner.read(lock, consistent).await;
        self.count(before, out)
    }

    async fn write(&self, write: Write<'_>) -> pipeline_lock::Result<Written> {
        let before = self.inner.requests();
        let out = self.inner.write(write).await;
        self.count(before, out)
    }

    async fn update_waiters(&self, update: WaiterUpdate<'_>) -> pipeline_lock::Result<Option<Observed>> {
        let before = self.inner.requests();
        let out = self.inner.update_waiters(update).await;
        self.count(before, out)
    }

    async fn list_page(&self, query: &ListQuery<'_>) -> pipeline_lock::Result<Page> {
        self.inner.list_page(query).await
    }

    async fn doctor(&self) -> Vec<Check> {
        self.inner.doctor().await
    }
}

/// The default wait: 2 s polls, a 1 h lease, the default 30 s prune floor.
fn waiting(backoff: Option<Backoff>) -> AcquireOptions {
    AcquireOptions {
        backoff,
        ..AcquireOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_backed_off_waiter_stays_in_budget_keeps_its_place_and_is_served_first() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::in_memory());
    let holder = Locker::new(store.clone());
    let grant = holder.acquire("l", &who("holder"), &AcquireOptions::default()).await.unwrap();
    let interval = Duration::from_secs(2);
    let backoff = Backoff::new(2.0, Duration::from_secs(30), interval).unwrap();
    let (slow, even) = (Counted::over(store.clone()), Counted::over(store.clone()));
    let slow_wait = {
        let locker = Locker::new(slow.clone());
        tokio::spawn(async move { locker.acquire("l", &who("slow"), &waiting(Some(backoff))).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let even_wait = {
        let locker = Locker::new(even.clone());
        tokio::spawn(async move { locker.acquire("l", &who("even"), &waiting(None)).await })
    };
    let (mut slow_minutes, mut even_minutes) = (Vec::new(), Vec::new());
    let (mut slow_before, mut even_before) = (0, 0);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        slow_minutes.push(slow.mine() - slow_before);
        even_minutes.push(even.mine() - even_before);
        (slow_before, even_before) = (slow.mine(), even.mine());
    }
    println!("requests a minute, --backoff 2 --backoff-cap 30s: {slow_minutes:?}");
    println!("requests a minute, even 2 s polls: {even_minutes:?}");
    assert!(slow_minutes.iter().all(|n| *n <= 40), "over budget: {slow_minutes:?}");
    assert!(even_minutes.iter().all(|n| *n <= 40), "the plain wait is over budget: {even_minutes:?}");
    // Backed off after a minute: a pause of 30 s +-, and a refresh of its entry now and then.
    let later = &slow_minutes[1..];
    assert!(later.iter().all(|n| *n <= 8), "not backed off: {slow_minutes:?}");
    assert!(later.iter().sum::<u64>() <= 5 * later.len() as u64, "not backed off: {slow_minutes:?}");
    assert!(
        slow_minutes.iter().sum::<u64>() * 4 < even_minutes.iter().sum::<u64>(),
        "{slow_minutes:?} vs {even_minutes:?}"
    );
    // Ten minutes of 2 s polls beside it did not prune it: it is still first in the queue.
    let r = store.read("l", true).await.unwrap().record().cloned().unwrap();
    let owners: Vec<&str> = r.waiters.values().map(|w| w.owner.as_str()).collect();
    assert!(owners.contains(&"slow") && owners.contains(&"even"), "{owners:?}");
    holder.release("l", &Holding::grant(&grant), &ReleaseOptions::default()).await.unwrap();
    let released = tokio::time::Instant::now();
    let got = slow_wait.await.unwrap().expect("the first waiter gets the lock");
    assert_eq!(got.owner, "slow");
    // Noticed within one capped pause (30 s, spread by at most 1.1 for the head) of the release.
    assert!(released.elapsed() <= Duration::from_secs(34), "{:?}", released.elapsed());
    assert!(!even_wait.is_finished(), "the later waiter still waits");
    even_wait.abort();
}

#[test]
fn a_backoff_that_cannot_back_off_is_refused_before_any_request() {
    let dir = std::env::temp_dir().join(format!("pipeline-lock-tests/backoff-{:08x}", rand::random::<u32>()));
    for (args, says) in [
        (&["--backoff", "1"][..], "--backoff 1"),
        (&["--backoff", "2", "--backoff-cap", "1s"][..], "--backoff-cap"),
        (&["--backoff", "fast"][..], "--backoff"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline-lock"))
            .env_clear()
            .args(["--store", &format!("file://{}", dir.display()), "--owner", "o", "--lock", "l", "acquire"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!dir.join("l.lock").exists(), "nothing was written");
}
