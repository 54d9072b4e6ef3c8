//! Tracker's gRPC service `tracker.lock.v1alpha1.LockService` on `--grpc-listen`: the same
//! four calls as its REST API, through the same functions ([`super::tracker`]), with the
//! same token (metadata `authorization: Bearer TOKEN`).

use std::net::SocketAddr;

use tonic::{Code, Request, Response, Status};

use super::Shared;
use super::error::ApiError;
use super::tracker::{self, TrackerLock};

/// The code generated from proto/tracker/lock/v1alpha1/lock.proto by build.rs.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("tracker.lock.v1alpha1");
}

use proto::lock_service_server::{LockService, LockServiceServer};

/// The service on one [`Shared`].
#[derive(Debug, Clone)]
pub struct Tracker(Shared);

fn to_proto(l: TrackerLock) -> proto::Lock {
    proto::Lock {
        id: l.id,
        service: l.service,
        who: l.who,
        created_at: Some(prost_types::Timestamp {
            seconds: l.created_at.div_euclid(1000),
            nanos: (l.created_at.rem_euclid(1000) * 1_000_000) as i32,
        }),
        ..proto::Lock::default()
    }
}

/// The gRPC status of an HTTP error answer: the same meaning, the same message.
fn status(e: ApiError) -> Status {
    let code = match e.status.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        410 => Code::FailedPrecondition,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.message)
}

impl Tracker {
    /// Refuses a call without the token (reads: unless `--public-read`).
    fn authorize<T>(&self, req: &Request<T>, write: bool) -> Result<(), Status> {
        if !write && self.0.config.public_read {
            return Ok(());
        }
        let given = req.metadata().get("authorization").map(|v| v.as_bytes());
        super::auth::check_header(&self.0, given).map_err(status)
    }
}

#[tonic::async_trait]
impl LockService for Tracker {
    async fn create_lock(&self, req: Request<proto::CreateLockRequest>) -> Result<Response<proto::CreateLockResponse>, Status> {
        self.authorize(&req, true)?;
        let r = req.into_inner();
        match tracker::create(&self.0, &r.service, &r.who).await.map_err(status)? {
            Ok(lock) => Ok(Response::new(proto::CreateLockResponse { lock: Some(to_proto(lock)) })),
            Err(existing) => {
                let by = existing.map(|l| format!(": held by {} (id {})", l.who, l.id)).unwrap_or_default();
                Err(Status::already_exists(format!("lock already exists{by}")))
            }
        }
    }

    async fn get_lock(&self, req: Request<proto::GetLockRequest>) -> Result<Response<proto::GetLockResponse>, Status> {
        self.authorize(&req, false)?;
        let id = req.into_inner().id;
        match tracker::find(&self.0, &id).await.map_err(status)? {
            Some(lock) => Ok(Response::new(proto::GetLockResponse { lock: Some(to_proto(lock)) })),
            None => Err(Status::not_found(format!("lock not found: no grant with id {id:?}"))),
        }
    }

    async fn un_lock(&self, req: Request<proto::UnLockRequest>) -> Result<Response<proto::UnLockResponse>, Status> {
        self.authorize(&req, true)?;
        let id = req.into_inner().id;
        if !tracker::unlock(&self.0, &id).await.map_err(status)? {
            return Err(Status::not_found(format!("lock not found: no grant with id {id:?}")));
        }
        Ok(Response::new(proto::UnLockResponse {
            message: "Lock released successfully".into(),
            id,
            count: 1,
        }))
    }

    async fn list_locks(&self, req: Request<proto::ListLocksRequest>) -> Result<Response<proto::ListLocksResponse>, Status> {
        self.authorize(&req, false)?;
        let r = req.into_inner();
        let page = r.page.map(|p| p.max(1) as u32);
        let (locks, total, _, _) = tracker::page(&self.0, r.per_page, page).await.map_err(status)?;
        Ok(Response::new(proto::ListLocksResponse {
            locks: locks.into_iter().map(to_proto).collect(),
            total_count: u32::try_from(total).unwrap_or(u32::MAX),
        }))
    }
}

/// Serves the gRPC service on `listener` until the service is told to stop.
pub async fn run(listener: tokio::net::TcpListener, shared: Shared) -> crate::Result<()> {
    let mut stopping = shared.stopping.clone();
    let stop = async move {
        let _ = stopping.wait_for(|s| s.is_some()).await;
    };
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!("gRPC on {addr:?}");
    tonic::transport::Server::builder()
        .timeout(shared.config.max_wait + std::time::Duration::from_secs(30))
        .add_service(LockServiceServer::new(Tracker(shared)).max_decoding_message_size(super::MAX_BODY))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop)
        .await
        .map_err(|e| crate::Error::other("the gRPC server failed", e))
}
