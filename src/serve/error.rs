//! Errors as HTTP answers: one stable body, `{"error": TEXT, "code": NAME, "exit": N}`, where
//! `code` and `exit` are the CLI's exit-code meaning (docs/design.md, "Exit codes"), and the
//! HTTP status follows from it:
//!
//! | exit | code | HTTP |
//! | --- | --- | --- |
//! | 2 | `usage` | 400 |
//! | 72 | `held_by_other` | 409 |
//! | 73 | `held` | 409 |
//! | 74 | `superseded` | 409 |
//! | 75 | `timed_out` | 409 |
//! | 76 | `lease_lost` | 410 |
//! | 69 | `unavailable` | 503 |
//! | 77 | `access_denied` | 502 (the store refused the service, not the caller) |
//! | 78 | `config` | 500 |
//! | 128+N | `interrupted` | 503 (the service is stopping) |
//! | 1 | `unexpected` | 500 |

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;
use crate::report;

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The stable name.
    pub code: &'static str,
    /// The exit code of the same meaning, when there is one.
    pub exit: Option<u8>,
    /// What happened and what to do.
    pub message: String,
    /// Ask for a bearer token (401).
    challenge: bool,
}

impl ApiError {
    /// An error of the service itself (auth, bad paths), with no exit code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            exit: None,
            message: message.into(),
            challenge: false,
        }
    }

    /// A 400 for a request the handlers refuse before calling the library.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            exit: Some(crate::exit::USAGE),
            ..ApiError::new(StatusCode::BAD_REQUEST, "usage", message)
        }
    }

    /// Adds `WWW-Authenticate: Bearer` (RFC 6750) to a 401.
    pub fn with_challenge(mut self) -> ApiError {
        self.challenge = self.status == StatusCode::UNAUTHORIZED;
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, code) = match &e {
            Error::Usage(_) => (StatusCode::BAD_REQUEST, "usage"),
            Error::HeldByOther { .. } => (StatusCode::CONFLICT, "held_by_other"),
            Error::Held { .. } => (StatusCode::CONFLICT, "held"),
            Error::Superseded(_) => (StatusCode::CONFLICT, "superseded"),
            Error::TimedOut(_) => (StatusCode::CONFLICT, "timed_out"),
            Error::LeaseLost { .. } => (StatusCode::GONE, "lease_lost"),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::AccessDenied { .. } => (StatusCode::BAD_GATEWAY, "access_denied"),
            Error::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "config"),
            Error::Interrupted { .. } => (StatusCode::SERVICE_UNAVAILABLE, "interrupted"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "unexpected"),
        };
        ApiError {
            status,
            code,
            exit: Some(e.exit_code()),
            message: report::chain(&e),
            challenge: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "code": self.code, "exit": self.exit});
        let mut response = (self.status, Json(body)).into_response();
        if self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Unknown paths.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such path: {}", req.uri().path()))
}

/// Known paths with the wrong method.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Turns the plain-text rejections of axum's extractors and layers (a body over the limit,
/// a query that does not parse, a body sent too slowly) into the JSON error body.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "bad_request",
        _ => "unexpected",
    };
    let text = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

/// A body announced (`Content-Length`) as larger than [`super::MAX_BODY`] is refused at once:
/// the body limit alone would read up to the limit first, and wait for the rest until the
/// body timeout.
pub async fn announced_too_large(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > super::MAX_BODY as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is {n} bytes; at most {} are accepted", super::MAX_BODY),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Parses a JSON body; the error names the field (`serde_path_to_error`), as the CLI's
/// record errors do.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| ApiError::bad_request(format!("the request body is not the JSON expected: {e}")))
}
