//! The native JSON API: what the CLI does, for a job that only has `curl`. Every write is the
//! library call the CLI makes, with the options the CLI would build; the answers are the
//! CLI's `--output json` documents ([`crate::output`]).
//!
//! | request | CLI |
//! | --- | --- |
//! | `GET /api/v1/locks?prefix=&after=&limit=` | `list --output json` (one page) |
//! | `GET /api/v1/locks/{name}` | `status --output json` |
//! | `POST /api/v1/acquire` | `acquire --output json` |
//! | `POST /api/v1/renew` | `renew --output json` |
//! | `POST /api/v1/release` | `release --output json` (with `force` + `reason`: `--force --reason`) |

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, response::IntoResponse, response::Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Shared;
use super::error::{ApiError, parse_body};
use crate::ci::Identity;
use crate::cli::{check_slots, parse_duration, validate_lock, validate_text};
use crate::error::{Error, Occupant};
use crate::locker::{AcquireOptions, Grant, Holding, RETENTION, ReleaseOptions, Released, RenewOptions, Ttl, Wait};
use crate::output::{queue_json, status_json};
use crate::queue::QueueMode;
use crate::store;

/// The shortest poll interval a waiting acquire may ask for: a service polls for many.
pub const MIN_RETRY: Duration = Duration::from_millis(100);

/// The read routes.
pub fn reads() -> Router<Shared> {
    Router::new()
        .route("/api/v1/locks", get(list))
        .route("/api/v1/locks/{*name}", get(status))
}

/// The write routes.
pub fn writes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/acquire", post(acquire))
        .route("/api/v1/renew", post(renew))
        .route("/api/v1/release", post(release))
}

/// Refuses a name the store cannot hold, as the CLI does before connecting.
pub fn check_name(s: &Shared, lock: &str) -> Result<(), ApiError> {
    if let Some(url) = &s.url {
        url.check_lock_name(lock)?;
    }
    Ok(())
}

fn lock_name(s: &Shared, lock: &str) -> Result<String, ApiError> {
    let lock = validate_lock(lock)?;
    check_name(s, &lock)?;
    Ok(lock)
}

/// One lock as `status --output json` prints it, queue included.
pub fn lock_document(name: &str, o: &store::Observed, now: i64) -> Value {
    let mut v = status_json(name, o, now, 0);
    v["queue"] = queue_json(o, now, QueueMode::Fifo);
    v
}

async fn status(State(s): State<Shared>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let lock = lock_name(&s, &name)?;
    let observed = s.locker.status(&lock).await?;
    let now = s.locker.store().clock().now_ms();
    Ok(Json(lock_document(&lock, &observed, now)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(State(s): State<Shared>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(store::LIST_PAGE);
    if limit == 0 || limit > store::LIST_PAGE {
        return Err(ApiError::bad_request(format!("limit must be 1 to {}", store::LIST_PAGE)));
    }
    let store = s.locker.store();
    let page = store
        .list_page(&store::ListQuery {
            prefix: &q.prefix,
            after: q.after.as_deref(),
            limit,
        })
        .await?;
    let now = store.clock().now_ms();
    let locks: Vec<Value> = page.items.iter().map(|(n, o)| lock_document(n, o, now)).collect();
    Ok(Json(json!({"store": store.url(), "locks": locks, "count": locks.len(), "next": page.next, "now": now})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    lock: String,
    owner: String,
    /// Pipeline URL, shown on the page.
    url: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    disable_ttl: bool,
    /// How long to wait: a duration, at most `serve --max-wait`; absent or "0": do not wait.
    wait: Option<String>,
    /// Time between polls while waiting (at least 100 ms).
    retry_interval: Option<String>,
    queue: Option<QueueMode>,
    reason: Option<String>,
    force_after: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    supersede: bool,
    ordinal: Option<u64>,
    slots: Option<u32>,
    #[serde(default)]
    shared: bool,
}

fn duration(field: &str, v: &Option<String>) -> Result<Option<Duration>, ApiError> {
    Ok(v.as_deref().map(|d| parse_duration(field, d)).transpose()?)
}

async fn acquire(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let b: AcquireBody = parse_body(&body)?;
    let lock = lock_name(&s, &b.lock)?;
    let mut me = super::tracker::identity(&b.owner, b.url.map(|u| validate_text("url", &u)).transpose()?)?;
    let reason = b.reason.map(|r| validate_text("reason", &r)).transpose()?;
    me.holder.reason = reason.clone();
    me.holder.ordinal = b.ordinal;
    if b.force && reason.is_none() {
        return Err(ApiError::bad_request("force needs a reason"));
    }
    let wait = match duration("wait", &b.wait)? {
        None => Wait::No,
        Some(d) if d.is_zero() => Wait::No,
        Some(d) if d > s.config.max_wait => {
            return Err(ApiError::bad_request(format!(
                "wait {d:?} is longer than this service allows (serve --max-wait {:?})",
                s.config.max_wait
            )));
        }
        Some(d) => Wait::For(d),
    };
    let ttl = match (b.disable_ttl, duration("ttl", &b.ttl)?) {
        (true, Some(_)) => return Err(ApiError::bad_request("ttl and disable_ttl exclude each other")),
        (true, None) => None,
        (false, Some(d)) if d.is_zero() => return Err(ApiError::bad_request("ttl must be longer than 0")),
        (false, Some(d)) => Some(d),
        (false, None) => Some(s.config.ttl),
    };
    let retry_interval = match duration("retry_interval", &b.retry_interval)? {
        Some(d) if d < MIN_RETRY => {
            return Err(ApiError::bad_request(format!("retry_interval must be at least {MIN_RETRY:?}")));
        }
        Some(d) => d,
        None => AcquireOptions::default().retry_interval,
    };
    let opts = AcquireOptions {
        ttl,
        retry_interval,
        force_after: duration("force_after", &b.force_after)?,
        wait,
        force: if b.force { reason.clone() } else { None },
        reason,
        clock_margin: s.config.clock_margin,
        queue: b.queue.unwrap_or_default(),
        supersede: b.supersede,
        ordinal: b.ordinal,
        slots: b.slots.map(check_slots).transpose()?.unwrap_or(1),
        shared: b.shared,
        ..AcquireOptions::default()
    };
    let grant = detached(&s, &lock, me, opts).await?;
    let mut json = serde_json::to_value(&grant).map_err(|e| ApiError::from(Error::other("cannot encode the grant", e)))?;
    json["id"] = super::tracker::grant_id(&lock, &grant.token).into();
    Ok(Json(json).into_response())
}

/// What "the client went away" stops a wait with, as SIGPIPE does a writer whose reader is gone.
const CLIENT_GONE: i32 = libc::SIGPIPE;

/// Tells a detached acquire to stop when the request that waits for it is dropped.
struct StopOnDrop(Arc<watch::Sender<Option<i32>>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_if_modified(|s| s.is_none().then(|| *s = Some(CLIENT_GONE)).is_some());
    }
}

/// Runs `acquire` in a task of its own. A client that goes away mid-wait drops its request,
/// and with it [`StopOnDrop`]: the wait then stops and takes its entry out of the queue (a
/// dropped wait would leave it there, holding up the waiters behind it until pruned), and a
/// grant made just then is given back. The service's stop signal stops the wait the same way.
async fn detached(s: &Shared, lock: &str, me: Identity, mut opts: AcquireOptions) -> crate::Result<Grant> {
    let (stop, stopped) = watch::channel(None);
    let stop = Arc::new(stop);
    opts.cancel = Some(stopped.clone());
    let (locker, lock, forward, mut stopping) = (s.locker.clone(), lock.to_string(), stop.clone(), s.stopping.clone());
    let task = tokio::spawn(async move {
        let wait = locker.acquire(&lock, &me, &opts);
        tokio::pin!(wait);
        let result = loop {
            tokio::select! {
                r = &mut wait => break r,
                Ok(()) = stopping.changed() => {
                    let sig = *stopping.borrow();
                    forward.send_if_modified(|s| (s.is_none() && sig.is_some()).then(|| *s = sig).is_some());
                }
            }
        };
        let sig = *stopped.borrow();
        match (result, sig) {
            (Ok(g), Some(sig)) => {
                let _ = locker.release(&lock, &Holding::grant(&g), &ReleaseOptions::default()).await;
                Err(Error::Interrupted {
                    signal: sig,
                    message: format!("got lock {lock:?} as the wait was stopped (signal {sig}); released it again"),
                })
            }
            (r, _) => r,
        }
    });
    let _stop = StopOnDrop(stop);
    task.await.map_err(|e| Error::other("the acquire task failed", e))?
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HolderBody {
    lock: String,
    owner: String,
    /// The grant's token; without it the grant is found by owner (a later job).
    token: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    disable_ttl: bool,
    #[serde(default)]
    shared: bool,
    /// Release whoever holds it (break-glass), with `reason`.
    #[serde(default)]
    force: bool,
    reason: Option<String>,
    /// Release: 409 (exit 72's meaning) when someone else holds it.
    #[serde(default)]
    strict: bool,
}

impl HolderBody {
    fn holding(&self) -> Result<Holding, ApiError> {
        let mut h = Holding::pipeline(&validate_text("owner", &self.owner)?, self.token.clone());
        h.shared = self.shared;
        Ok(h)
    }
}

async fn renew(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let b: HolderBody = parse_body(&body)?;
    let lock = lock_name(&s, &b.lock)?;
    let ttl = match (b.disable_ttl, duration("ttl", &b.ttl)?) {
        (true, Some(_)) => return Err(ApiError::bad_request("ttl and disable_ttl exclude each other")),
        (true, None) => Ttl::NoEnd,
        (false, Some(d)) if d.is_zero() => return Err(ApiError::bad_request("ttl must be longer than 0")),
        (false, Some(d)) => Ttl::For(d),
        (false, None) => Ttl::Keep,
    };
    let opts = RenewOptions {
        ttl,
        retention: RETENTION,
        in_history: true,
    };
    let grant = s.locker.renew(&lock, &b.holding()?, opts).await?;
    let json = serde_json::to_value(&grant).map_err(|e| ApiError::from(Error::other("cannot encode the grant", e)))?;
    Ok(Json(json).into_response())
}

async fn release(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let b: HolderBody = parse_body(&body)?;
    let lock = lock_name(&s, &b.lock)?;
    let reason = b.reason.as_deref().map(|r| validate_text("reason", r)).transpose()?;
    if b.force && reason.is_none() {
        return Err(ApiError::bad_request("force needs a reason (it is kept in the lock's history)"));
    }
    let opts = ReleaseOptions {
        force: if b.force { reason } else { None },
        ..ReleaseOptions::default()
    };
    let result = s.locker.release(&lock, &b.holding()?, &opts).await?;
    if let (true, Released::HeldByOther { owner, fence }) = (b.strict, &result) {
        return Err(Error::HeldByOther {
            message: format!(
                "lock {lock:?} is held by {owner} (fence {fence}), not by {}; left alone (strict)",
                b.owner
            ),
            occupant: Occupant {
                lock: lock.clone(),
                owner: Some(owner.clone()),
                fence: Some(*fence),
            },
        }
        .into());
    }
    Ok(Json(json!({"lock": lock, "store": s.locker.store().url(), "release": result})).into_response())
}
