//! Bearer-token check for `/api` and `/ws` when the server was started with a token, with a limit
//! on failed attempts per peer so a token cannot be guessed at network speed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use attune_shared::WS_TOKEN_PARAM;

use super::AppState;
use super::error::AppError;

/// Failed attempts a peer may make within [`ATTEMPT_WINDOW`] before it gets 429.
pub const MAX_FAILED_ATTEMPTS: u32 = 10;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// Failed token attempts per peer address (`None`: a caller without a socket, as in tests).
#[derive(Debug, Default)]
pub struct FailedAttempts {
    peers: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl FailedAttempts {
    /// Whether `peer` has used up its attempts in the current window.
    fn blocked(&self, peer: Option<IpAddr>, now: Instant) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&peer)
            .is_some_and(|(start, count)| now.duration_since(*start) < ATTEMPT_WINDOW && *count >= MAX_FAILED_ATTEMPTS)
    }

    fn record_failure(&self, peer: Option<IpAddr>, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // Forget old windows, so the map stays as small as the set of recent offenders.
        peers.retain(|_, (start, _)| now.duration_since(*start) < ATTEMPT_WINDOW);
        let entry = peers.entry(peer).or_insert((now, 0));
        entry.1 += 1;
    }
}

/// Lets the request through when no token is configured or the request carries it, either as
/// `Authorization: Bearer <token>` or, on the WebSocket upgrade only, as `?token=<token>`.
/// A peer with [`MAX_FAILED_ATTEMPTS`] wrong tokens in the last minute gets 429 without a check.
/// A request with no token at all is refused but not counted: it guesses nothing, and a page
/// opened without its token makes a dozen such requests before the user adds it.
pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.token() else {
        return next.run(request).await;
    };
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let now = Instant::now();
    if state.failed_attempts().blocked(peer, now) {
        return AppError::TooManyRequests(format!(
            "too many requests with a wrong token from this address; wait {} s and try again",
            ATTEMPT_WINDOW.as_secs()
        ))
        .into_response();
    }
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
        if presented.is_some() {
            state.failed_attempts().record_failure(peer, now);
        }
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
    use super::*;

    #[test]
    fn a_peer_is_blocked_after_its_failures_until_the_window_passes() {
        let attempts = FailedAttempts::default();
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        let other = Some(IpAddr::from([10, 0, 0, 2]));
        let start = Instant::now();
        for _ in 0..MAX_FAILED_ATTEMPTS {
            assert!(!attempts.blocked(peer, start));
            attempts.record_failure(peer, start);
        }
        assert!(attempts.blocked(peer, start));
        assert!(!attempts.blocked(other, start));
        assert!(!attempts.blocked(peer, start + ATTEMPT_WINDOW));
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
