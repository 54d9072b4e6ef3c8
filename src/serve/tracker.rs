//! Tracker's lock API, path for path and field for field, so its scripts (deploy.sh,
//! migrate.sh, the GitHub Actions and Jenkins snippets) work unchanged apart from the URL and
//! a bearer token. `service` is the lock name, `who` the owner.
//!
//! The `id` names one grant: the lock name in hex, a dot, and the grant's token
//! (`<hex(lock)>.<token>`). It is opaque to Tracker's clients (they only pass it back in
//! the path), safe in a URL path without escaping, and lets `unlock` release only that
//! grant: the release is conditional on the token, so an id kept from an earlier grant never
//! releases a later holder of the same lock.
//!
//! Tracker's locks never wait and never re-enter: a create on a held lock is a 409, even for
//! the same `who` (Tracker scripts often share one `who`, such as "pipeline"). Tracker's locks
//! have no lease; ours get `serve --ttl` (1 hour unless told), so a crashed job's lock frees
//! itself.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::error::{ApiError, parse_body};
use crate::ci::{CiSystem, Identity};
use crate::clock::rfc3339;
use crate::error::Error;
use crate::locker::{AcquireOptions, Holding, ReleaseOptions, Released, Wait};
use crate::record::{Holder, Record};
use crate::store::{self, State as Found};

/// The most locks one page of `locks/list` returns.
pub const MAX_PER_PAGE: u32 = 1000;
/// A page without `per_page`.
pub const DEFAULT_PER_PAGE: u32 = 100;

/// The read routes.
pub fn reads() -> Router<Shared> {
    Router::new()
        .route("/api/v1alpha1/lock/{id}", get(get_lock))
        .route("/api/v1alpha1/locks/list", get(list_locks))
}

/// The write routes (`unlock` is a GET in Tracker's API, and a write all the same).
pub fn writes() -> Router<Shared> {
    Router::new()
        .route("/api/v1alpha1/lock", post(create_lock))
        .route("/api/v1alpha1/unlock/{id}", get(unlock_lock))
}

/// The id of the grant of `token` on `lock`.
pub fn grant_id(lock: &str, token: &str) -> String {
    let hex: String = lock.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{token}")
}

/// The lock and token an id names; `None` for anything that is not an id of ours.
pub fn parse_id(id: &str) -> Option<(String, String)> {
    let (hex, token) = id.split_once('.')?;
    let ok_token = !token.is_empty() && token.len() <= 128 && token.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok_token || hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let lock = String::from_utf8(bytes?).ok()?;
    crate::cli::validate_lock(&lock).ok()?;
    Some((lock, token.to_string()))
}

/// Tracker's `Lock`: one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerLock {
    /// The grant's id ([`grant_id`]).
    pub id: String,
    /// The lock name.
    pub service: String,
    /// The owner.
    pub who: String,
    /// When it was granted, store ms.
    pub created_at: i64,
}

impl TrackerLock {
    fn new(lock: &str, owner: &str, token: &str, acquired_at: i64) -> TrackerLock {
        TrackerLock {
            id: grant_id(lock, token),
            service: lock.to_string(),
            who: owner.to_string(),
            created_at: acquired_at,
        }
    }

    /// As Tracker's REST API shows it.
    pub fn json(&self) -> Value {
        json!({"id": self.id, "service": self.service, "who": self.who, "createdAt": rfc3339(self.created_at)})
    }
}

/// Every grant in `r`, as Tracker's locks: the exclusive holder, or each shared hold.
fn grants(lock: &str, r: &Record) -> Vec<TrackerLock> {
    if let (Some(owner), Some(token)) = (&r.owner, &r.token) {
        return vec![TrackerLock::new(lock, owner, token, r.acquired_at.unwrap_or_default())];
    }
    r.holds()
        .into_iter()
        .map(|(_, h)| TrackerLock::new(lock, &h.owner, &h.token, h.acquired_at))
        .collect()
}

#[derive(Deserialize)]
struct CreateLock {
    service: String,
    who: String,
    // Tracker's other fields (environment, resource, event_id) are accepted and not stored.
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("lock not found: no grant with id {id:?}"))
}

/// Takes `service` for `who`, never waiting: the grant, or the grant that holds it
/// (`None` when it is free but others wait in its queue).
pub async fn create(s: &Shared, service: &str, who: &str) -> Result<Result<TrackerLock, Option<TrackerLock>>, ApiError> {
    let lock = crate::cli::validate_lock(service)?;
    super::api::check_name(s, &lock)?;
    let who = identity(who, None)?;
    let opts = AcquireOptions {
        ttl: Some(s.config.ttl),
        wait: Wait::No,
        reenter: false,
        clock_margin: s.config.clock_margin,
        ..AcquireOptions::default()
    };
    match s.locker.acquire(&lock, &who, &opts).await {
        Ok(g) => Ok(Ok(TrackerLock::new(&lock, &g.owner, &g.token, g.acquired_at))),
        Err(Error::Held { .. } | Error::Superseded(_)) => Ok(Err(match s.locker.status(&lock).await?.state {
            Found::Valid(r) => grants(&lock, &r).into_iter().next(),
            _ => None,
        })),
        Err(e) => Err(e.into()),
    }
}

/// The grant `id`, while it is held.
pub async fn find(s: &Shared, id: &str) -> Result<Option<TrackerLock>, ApiError> {
    let Some((lock, _)) = parse_id(id) else { return Ok(None) };
    Ok(match s.locker.status(&lock).await?.state {
        Found::Valid(r) => grants(&lock, &r).into_iter().find(|g| g.id == id),
        _ => None,
    })
}

/// Releases the grant `id` and no other; `false` when it is not held (any more).
pub async fn unlock(s: &Shared, id: &str) -> Result<bool, ApiError> {
    let Some((lock, token)) = parse_id(id) else { return Ok(false) };
    // The owner only words the messages: the release is conditional on the token.
    let observed = s.locker.status(&lock).await?;
    let Some(r) = observed.record() else { return Ok(false) };
    let Some(grant) = grants(&lock, r).into_iter().find(|g| g.id == id) else {
        return Ok(false);
    };
    let who = Holding {
        owner: grant.who,
        token: Some(token),
        by_owner: false,
        shared: r.owner.is_none(),
    };
    Ok(matches!(
        s.locker.release(&lock, &who, &ReleaseOptions::default()).await?,
        Released::Released { .. }
    ))
}

/// Page `page` (from 1) of `per_page` held locks in name order, and how many are held.
pub async fn page(s: &Shared, per_page: Option<u32>, page: Option<u32>) -> Result<(Vec<TrackerLock>, usize, u32, u32), ApiError> {
    let per_page = per_page.unwrap_or(DEFAULT_PER_PAGE);
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::bad_request(format!("per_page must be 1 to {MAX_PER_PAGE}")));
    }
    let page = page.unwrap_or(1).max(1);
    let mut held = all_grants(s).await?;
    // DynamoDB scans in hash order: sorted, the pages are in name order on every store.
    held.sort_by(|a, b| a.service.cmp(&b.service));
    let total = held.len();
    let start = (page as usize - 1).saturating_mul(per_page as usize);
    Ok((held.into_iter().skip(start).take(per_page as usize).collect(), total, page, per_page))
}

/// Every grant in the store, page by page (memory holds the grants, not the records).
async fn all_grants(s: &Shared) -> Result<Vec<TrackerLock>, ApiError> {
    let store = s.locker.store();
    let (mut after, mut held) = (None::<String>, Vec::new());
    loop {
        let query = store::ListQuery {
            prefix: "",
            after: after.as_deref(),
            limit: store::LIST_PAGE,
        };
        let page = store.list_page(&query).await?;
        for (name, o) in &page.items {
            if let Some(r) = o.record() {
                held.extend(grants(name, r));
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(held),
        }
    }
}

/// `POST /api/v1alpha1/lock` {service, who}: 201 with the lock, or 409 with `existingLock`.
async fn create_lock(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateLock = parse_body(&body)?;
    Ok(match create(&s, &req.service, &req.who).await? {
        Ok(lock) => (StatusCode::CREATED, axum::Json(lock.json())).into_response(),
        Err(existing) => {
            let body = json!({
                "error": "lock already exists",
                "code": "held",
                "exit": crate::exit::HELD,
                "existingLock": existing.map(|l| l.json()),
            });
            (StatusCode::CONFLICT, axum::Json(body)).into_response()
        }
    })
}

/// Who `owner` is, for a grant made through the service.
pub fn identity(owner: &str, url: Option<String>) -> Result<Identity, ApiError> {
    let owner = crate::cli::validate_text("owner (who)", owner)?;
    Ok(Identity {
        owner,
        holder: Holder {
            ci: Some("serve".into()),
            url,
            ..Holder::default()
        },
        system: CiSystem::Local,
        project: None,
        server_host: None,
    })
}

/// `GET /api/v1alpha1/lock/{id}`: the grant, while it is held.
async fn get_lock(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let found = find(&s, &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(found.json()).into_response())
}

/// `GET /api/v1alpha1/unlock/{id}`: releases that grant and no other.
async fn unlock_lock(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !unlock(&s, &id).await? {
        return Err(not_found(&id));
    }
    let body = json!({"success": true, "message": "Lock released successfully", "id": id, "count": 1});
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    per_page: Option<u32>,
    page: Option<u32>,
}

/// `GET /api/v1alpha1/locks/list?per_page=&page=`: the held locks, `total` of them.
async fn list_locks(State(s): State<Shared>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let (locks, total, page, per_page) = page(&s, q.per_page, q.page).await?;
    let locks: Vec<Value> = locks.iter().map(TrackerLock::json).collect();
    Ok(axum::Json(json!({"locks": locks, "total": total, "page": page, "perPage": per_page})).into_response())
}

#[cfg(test)]
mod tests {
    use super::{grant_id, parse_id};

    #[test]
    fn an_id_names_its_lock_and_token() {
        let id = grant_id("team/deploy prod", "00ff12ab");
        assert_eq!(parse_id(&id), Some(("team/deploy prod".into(), "00ff12ab".into())));
        assert!(!id.contains('/') && !id.contains(' '));
    }

    #[test]
    fn what_is_not_an_id_is_refused() {
        for bad in ["", ".", "abc", "6.", ".ff", "zz.ff", "6162.f/f", "0a.ff", "6162.ff.ff"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
