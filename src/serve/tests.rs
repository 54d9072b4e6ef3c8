//! The service's timing on tokio's paused clock, over the in-memory store: a bounded wait ends
//! at its bound with exit 75's meaning, and the stop signal ends a wait at once and takes the
//! waiter out of the queue.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::{Config, Shared, auth::Token, router};
use crate::locker::Locker;
use crate::store::memory::MemoryStore;

const TOKEN: &str = "paused-clock-token-0123";

fn service() -> (Shared, watch::Sender<Option<i32>>) {
    let (stop, stopping) = watch::channel(None);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: None,
        token: Some(Token::new(TOKEN).unwrap()),
        public_read: false,
        ttl: Duration::from_secs(3600),
        max_wait: Duration::from_secs(300),
        clock_margin: Duration::from_secs(2),
    };
    let shared = Shared {
        locker: Locker::new(Arc::new(MemoryStore::in_memory())),
        url: None,
        config: Arc::new(config),
        stopping,
    };
    (shared, stop)
}

async fn post(s: &Shared, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let req = Request::post(path)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = router(s.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test(start_paused = true)]
async fn a_bounded_wait_ends_at_its_bound_as_timed_out() {
    let (s, _stop) = service();
    let (code, _) = post(&s, "/api/v1/acquire", serde_json::json!({"lock": "l", "owner": "a"})).await;
    assert_eq!(code, StatusCode::OK);
    let t0 = Instant::now();
    let body = serde_json::json!({"lock": "l", "owner": "b", "wait": "30s", "retry_interval": "1s"});
    let (code, err) = post(&s, "/api/v1/acquire", body).await;
    assert_eq!(
        (code, err["code"].as_str(), err["exit"].as_u64()),
        (StatusCode::CONFLICT, Some("timed_out"), Some(75)),
        "{err}"
    );
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(33), "waited {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn the_stop_signal_ends_a_wait_at_once_and_leaves_the_queue() {
    let (s, stop) = service();
    post(&s, "/api/v1/acquire", serde_json::json!({"lock": "l", "owner": "a"})).await;
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { post(&s, "/api/v1/acquire", serde_json::json!({"lock": "l", "owner": "b", "wait": "5m"})).await }
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    let queued = s.locker.status("l").await.unwrap().record().unwrap().waiters.len();
    assert_eq!(queued, 1, "b waits in the queue");
    let t0 = Instant::now();
    stop.send(Some(libc::SIGTERM)).unwrap();
    let (code, err) = waiter.await.unwrap();
    assert_eq!(
        (code, err["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("interrupted")),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the wait went on for {:?} after the stop",
        t0.elapsed()
    );
    assert!(
        s.locker.status("l").await.unwrap().record().unwrap().waiters.is_empty(),
        "b stayed in the queue"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tracker_lock_has_the_service_lease_and_never_waits() {
    let (s, _stop) = service();
    let (code, created) = post(&s, "/api/v1alpha1/lock", serde_json::json!({"service": "l", "who": "a"})).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let t0 = Instant::now();
    let (code, _) = post(&s, "/api/v1alpha1/lock", serde_json::json!({"service": "l", "who": "b"})).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(t0.elapsed() < Duration::from_secs(1), "a Tracker create waited {:?}", t0.elapsed());
    let r = s.locker.status("l").await.unwrap().record().cloned().unwrap();
    assert_eq!(r.lease_expires_at.unwrap() - r.acquired_at.unwrap(), 3_600_000);
    // After the lease (and the clock margin), someone else gets it.
    tokio::time::sleep(Duration::from_secs(3600 + 3)).await;
    let (code, next) = post(&s, "/api/v1alpha1/lock", serde_json::json!({"service": "l", "who": "b"})).await;
    assert_eq!((code, next["who"].as_str()), (StatusCode::CREATED, Some("b")), "{next}");
}
