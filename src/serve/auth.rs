//! Bearer-token auth: writes always need the token, reads too unless `--public-read`. The
//! token is compared in constant time and never logged or echoed.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::Shared;
use super::error::ApiError;
use crate::error::{Error, Result};

/// The shortest token accepted: a guessable one would make the check pointless.
const MIN_TOKEN: usize = 16;

/// The service's bearer token. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in `path`: its whole content less surrounding white space (a trailing
    /// newline from `echo` or a Kubernetes secret is not part of it).
    pub fn from_file(path: &std::path::Path) -> Result<Token> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("cannot read --token-file {}: {e}", path.display())))?;
        Token::new(text.trim())
    }

    /// A token from its text: printable ASCII without spaces, at least 16 characters.
    pub fn new(text: &str) -> Result<Token> {
        if text.len() < MIN_TOKEN || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Usage(format!(
                "the serve token must be at least {MIN_TOKEN} printable characters without spaces; \
                 make one with: head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
            )));
        }
        Ok(Token(text.as_bytes().to_vec()))
    }

    /// Does `given` equal the token? Constant time in the content (only a length mismatch
    /// returns early, and the length is no secret worth the complexity of hiding).
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.ct_eq(given).into()
    }
}

/// Why a request with this `Authorization` value is refused, if it is (HTTP and gRPC alike).
pub fn check_header(shared: &Shared, header: Option<&[u8]>) -> std::result::Result<(), ApiError> {
    let Some(token) = &shared.config.token else {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "read_only",
            "this service was started without --token-file: it is read-only",
        ));
    };
    let unauthorized = |why: &str| ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "unauthorized", why);
    let header = header.ok_or_else(|| unauthorized("this needs the service's token: send Authorization: Bearer TOKEN"))?;
    let given = header
        .strip_prefix(b"Bearer ")
        .ok_or_else(|| unauthorized("malformed Authorization header: send Authorization: Bearer TOKEN"))?;
    if !token.matches(given) {
        return Err(unauthorized("wrong token"));
    }
    Ok(())
}

fn check(shared: &Shared, req: &Request) -> std::result::Result<(), ApiError> {
    check_header(shared, req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
}

/// Middleware of the read routes.
pub async fn reads(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    if shared.config.public_read {
        return next.run(req).await;
    }
    match check(&shared, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.with_challenge().into_response(),
    }
}

/// Middleware of the write routes: nothing runs (nothing is written) without the token.
pub async fn writes(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    match check(&shared, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.with_challenge().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn a_token_matches_itself_only() {
        let t = Token::new("0123456789abcdef0123").unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef0124"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789 abcdef0123").is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token::new("0123456789abcdef0123").unwrap();
        assert!(!format!("{t:?}").contains("0123"));
    }
}
