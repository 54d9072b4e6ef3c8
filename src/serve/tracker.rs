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
        .route("/api/v1alpha1/unlock/{id}", get(unlock))
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

/// Tracker's `Lock`.
pub fn lock_json(lock: &str, owner: &str, token: &str, acquired_at: i64) -> Value {
    json!({"id": grant_id(lock, token), "service": lock, "who": owner, "createdAt": rfc3339(acquired_at)})
}

/// Every grant in `r`, as Tracker's locks: the exclusive holder, or each shared hold.
fn grants(lock: &str, r: &Record) -> Vec<Value> {
    if let (Some(owner), Some(token)) = (&r.owner, &r.token) {
        return vec![lock_json(lock, owner, token, r.acquired_at.unwrap_or_default())];
    }
    r.holds()
        .into_iter()
        .map(|(_, h)| lock_json(lock, &h.owner, &h.token, h.acquired_at))
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

/// `POST /api/v1alpha1/lock` {service, who}: 201 with the lock, or 409 with `existingLock`.
async fn create_lock(State(s): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateLock = parse_body(&body)?;
    let lock = crate::cli::validate_lock(&req.service)?;
    let who = identity(&req.who, None)?;
    super::api::check_name(&s, &lock)?;
    let opts = AcquireOptions {
        ttl: Some(s.config.ttl),
        wait: Wait::No,
        reenter: false,
        clock_margin: s.config.clock_margin,
        ..AcquireOptions::default()
    };
    match s.locker.acquire(&lock, &who, &opts).await {
        Ok(g) => Ok((StatusCode::CREATED, axum::Json(lock_json(&lock, &g.owner, &g.token, g.acquired_at))).into_response()),
        Err(e @ (Error::Held { .. } | Error::Superseded(_))) => {
            let existing = match s.locker.status(&lock).await?.state {
                Found::Valid(r) => grants(&lock, &r).into_iter().next(),
                _ => None,
            };
            let body = json!({
                "error": "lock already exists",
                "code": "held",
                "exit": e.exit_code(),
                "existingLock": existing,
            });
            Ok((StatusCode::CONFLICT, axum::Json(body)).into_response())
        }
        Err(e) => Err(e.into()),
    }
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
    let (lock, _) = parse_id(&id).ok_or_else(|| not_found(&id))?;
    let found = match s.locker.status(&lock).await?.state {
        Found::Valid(r) => grants(&lock, &r).into_iter().find(|g| g["id"] == id.as_str()),
        _ => None,
    };
    found.map(|g| axum::Json(g).into_response()).ok_or_else(|| not_found(&id))
}

/// `GET /api/v1alpha1/unlock/{id}`: releases that grant and no other.
async fn unlock(State(s): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (lock, token) = parse_id(&id).ok_or_else(|| not_found(&id))?;
    // The owner only words the messages: the release is conditional on the token.
    let observed = s.locker.status(&lock).await?;
    let owner = observed
        .record()
        .and_then(|r| grants(&lock, r).into_iter().find(|g| g["id"] == id.as_str()))
        .and_then(|g| g["who"].as_str().map(str::to_string));
    let Some(owner) = owner else {
        return Err(not_found(&id));
    };
    let shared = observed.record().is_some_and(|r| r.owner.is_none());
    let who = Holding {
        owner,
        token: Some(token),
        by_owner: false,
        shared,
    };
    match s.locker.release(&lock, &who, &ReleaseOptions::default()).await? {
        Released::Released { .. } => Ok(axum::Json(json!({
            "success": true,
            "message": "Lock released successfully",
            "id": id,
            "count": 1,
        }))
        .into_response()),
        Released::NotHeld | Released::HeldByOther { .. } => Err(not_found(&id)),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    per_page: Option<u32>,
    page: Option<u32>,
}

/// `GET /api/v1alpha1/locks/list?per_page=&page=`: the held locks, `total` of them, in
/// name order, pages counted from 1.
async fn list_locks(State(s): State<Shared>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let per_page = q.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::bad_request(format!("per_page must be 1 to {MAX_PER_PAGE}")));
    }
    let page = q.page.unwrap_or(1).max(1);
    let held = all_grants(&s).await?;
    let total = held.len();
    let start = (page as usize - 1).saturating_mul(per_page as usize);
    let locks: Vec<Value> = held.into_iter().skip(start).take(per_page as usize).collect();
    Ok(axum::Json(json!({"locks": locks, "total": total, "page": page, "perPage": per_page})).into_response())
}

/// Every grant in the store, page by page (memory holds the grants, not the records).
pub async fn all_grants(s: &Shared) -> Result<Vec<Value>, ApiError> {
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
