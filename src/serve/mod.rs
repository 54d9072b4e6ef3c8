//! `pipeline-lock serve`: the store behind HTTP (docs/design.md, "The lock service: serve (v2)").
//! Tracker's lock API ([`tracker`]), the native JSON API ([`api`]) and the live page
//! ([`page`]), all on the same [`Locker`] calls as the CLI: nothing of the lock protocol is
//! re-implemented here. Auth is [`auth`]; errors and their HTTP statuses are [`error`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tokio::sync::watch;

use crate::cli::{ServeArgs, parse_duration};
use crate::error::{Error, Result};
use crate::exit;
use crate::locker::Locker;

pub mod api;
pub mod auth;
pub mod error;
pub mod grpc;
pub mod listen;
pub mod page;
pub mod tracker;

#[cfg(test)]
mod tests;

/// The largest request body accepted: an acquire with every text at its 1024-byte limit is
/// well under 16 KiB; anything bigger is refused (413) before it is parsed.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a client may take to send its request body. A slow client only holds its own
/// connection (every connection is its own task), and is cut off after this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `serve`'s checked options.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where Tracker's gRPC service listens, if anywhere.
    pub grpc_listen: Option<SocketAddr>,
    /// The bearer token; `None`: read-only service.
    pub token: Option<auth::Token>,
    /// Reads need no token.
    pub public_read: bool,
    /// Lease of grants made through Tracker's API.
    pub ttl: Duration,
    /// The longest wait an acquire may ask for.
    pub max_wait: Duration,
    /// `--clock-margin`.
    pub clock_margin: Duration,
}

impl Config {
    /// Checks `serve`'s flags, reading the token file, before anything connects.
    pub fn build(args: &ServeArgs, clock_margin: Duration) -> Result<Config> {
        let address = |flag: &str, v: &str| -> Result<SocketAddr> {
            v.parse().map_err(|e| {
                Error::Usage(format!(
                    "{flag} {v:?} is not an address ({e}); give IP:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080"
                ))
            })
        };
        let listen = address("--listen", &args.listen)?;
        let grpc_listen = args.grpc_listen.as_deref().map(|v| address("--grpc-listen", v)).transpose()?;
        let token = args.token_file.as_deref().map(auth::Token::from_file).transpose()?;
        if token.is_none() && !args.public_read {
            return Err(Error::Usage(
                "serve needs --token-file (writes and reads need its token), or --public-read for a read-only service".into(),
            ));
        }
        let ttl = parse_duration("--ttl", &args.ttl)?;
        if ttl.is_zero() {
            return Err(Error::Usage("--ttl must be longer than 0".into()));
        }
        Ok(Config {
            listen,
            grpc_listen,
            token,
            public_read: args.public_read,
            ttl,
            max_wait: parse_duration("--max-wait", &args.max_wait)?,
            clock_margin,
        })
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The lock operations.
    pub locker: Locker,
    /// The store's URL, for its name limits (`None`: a store without a URL, e.g. in memory).
    pub url: Option<crate::store::StoreUrl>,
    /// The options.
    pub config: Arc<Config>,
    /// Becomes `Some(signal)` when the server is told to stop: waiting acquires give up
    /// (and leave the queue) instead of holding the shutdown back.
    pub stopping: watch::Receiver<Option<i32>>,
}

/// The whole HTTP service on `shared`.
pub fn router(shared: Shared) -> Router {
    let reads = Router::new()
        .merge(api::reads())
        .merge(tracker::reads())
        .merge(page::data())
        .route_layer(middleware::from_fn_with_state(shared.clone(), auth::reads));
    let writes = Router::new()
        .merge(api::writes())
        .merge(tracker::writes())
        .route_layer(middleware::from_fn_with_state(shared.clone(), auth::writes));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(page::shell())
        .merge(reads)
        .merge(writes)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn(error::json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(error::announced_too_large))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(middleware::from_fn(access_log))
        .with_state(shared)
}

/// One line per request: method, path (never the query or headers, where a token could
/// be), status and time taken.
async fn access_log(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        target: "access",
        %method,
        path = %path.chars().take(200).collect::<String>(),
        status = response.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Runs the service until SIGTERM or SIGINT, then finishes the requests in flight.
pub async fn serve(locker: Locker, url: &crate::store::StoreUrl, config: &Config) -> Result<u8> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", config.listen)))?;
    let bound = listener.local_addr().map_err(|e| Error::other("cannot read the bound address", e))?;
    let (stop, stopping) = watch::channel(None);
    let shared = Shared {
        locker: locker.clone(),
        url: Some(url.clone()),
        config: Arc::new(config.clone()),
        stopping: stopping.clone(),
    };
    if !bound.ip().is_loopback() && config.public_read {
        tracing::warn!("serving {bound} beyond loopback with --public-read: anyone who reaches it sees every lock");
    }
    // The bound addresses go to stdout before anything else (the gRPC line, then the HTTP
    // one), so a script (or a test) that asked for port 0 learns which ports it got.
    let grpc = match config.grpc_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Usage(format!("cannot listen on {addr} (--grpc-listen): {e}")))?;
            let at = l.local_addr().map_err(|e| Error::other("cannot read the bound address", e))?;
            Some((at, tokio::spawn(grpc::run(l, shared.clone()))))
        }
        None => None,
    };
    if let Some((at, _)) = &grpc {
        // Before the HTTP line: a reader of the first line then knows both.
        println!("gRPC tracker.lock.v1alpha1.LockService on {at}");
    }
    println!("serving {} on http://{bound}", locker.store().url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::other("cannot install the SIGTERM handler", e))?;
    let shutdown = async move {
        let sig = tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = tokio::signal::ctrl_c() => libc::SIGINT,
        };
        tracing::warn!("signal {sig}: finishing the requests in flight, then stopping");
        let _ = stop.send(Some(sig));
    };
    listen::run(listener, router(shared), shutdown).await;
    if let Some((_, task)) = grpc {
        match task.await {
            Ok(result) => result?,
            Err(e) => return Err(Error::other("the gRPC server stopped", e)),
        }
    }
    Ok(exit::OK)
}
