//! Where the backend is: API and WebSocket URLs derived from the page's own location.

use attune_shared::{WS_PATH, WS_TOKEN_PARAM};

/// The WebSocket URL for a page served from `protocol` (`http:`/`https:`) and `host`
/// (`name:port`), with the token as a query parameter when there is one.
pub fn ws_url(protocol: &str, host: &str, token: Option<&str>) -> String {
    let scheme = if protocol == "https:" { "wss" } else { "ws" };
    match token {
        Some(token) => format!("{scheme}://{host}{WS_PATH}?{WS_TOKEN_PARAM}={}", encode_query_value(token)),
        None => format!("{scheme}://{host}{WS_PATH}"),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `Authorization` header value for a token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_follows_page_scheme_and_host() {
        assert_eq!(ws_url("http:", "127.0.0.1:8080", None), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url("https:", "attune.example:443", None), "wss://attune.example:443/ws");
    }

    #[test]
    fn token_is_sent_encoded_in_the_query() {
        assert_eq!(ws_url("http:", "h:1", Some("abc-DEF_123")), "ws://h:1/ws?token=abc-DEF_123");
        assert_eq!(ws_url("http:", "h:1", Some("a b&c")), "ws://h:1/ws?token=a%20b%26c");
        assert_eq!(bearer("t0ken"), "Bearer t0ken");
    }
}
