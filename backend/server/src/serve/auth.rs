//! Bearer-token check for `/api` and `/ws` when the server was started with a token.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use attune_shared::WS_TOKEN_PARAM;

use super::AppState;
use super::error::AppError;

/// Lets the request through when no token is configured or the request carries it, either as
/// `Authorization: Bearer <token>` or, on the WebSocket upgrade only, as `?token=<token>`.
pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.token() else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = if request.uri().path() == attune_shared::WS_PATH {
        request.uri().query().and_then(|q| {
            q.split('&').find_map(|pair| pair.strip_prefix(WS_TOKEN_PARAM).and_then(|rest| rest.strip_prefix('=')))
        })
    } else {
        None
    };
    let presented = from_header.or(from_query);
    if presented.is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes())) {
        next.run(request).await
    } else {
        AppError::Unauthorized.into_response()
    }
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
