//! Host and Origin checks, so no web page the user visits can drive the server: a page on another
//! site (or a DNS-rebinding page whose name now points at 127.0.0.1) gets 403 before any handler.
//!
//! - Every request's `Host` must be `localhost`, `127.0.0.1` or `[::1]` (any port), or match an
//!   `--allowed-host` entry (`name` matches any port, `name:port` only that port).
//! - `/ws` and every `/api` or `/v1` request that is not GET/HEAD/OPTIONS must carry no `Origin` (a
//!   non-browser client) or one whose host and port are the request's own `Host` (same origin) or
//!   an allowed entry that names its port (`trunk serve`'s 127.0.0.1:8081, say).

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::AppError;

/// Host names every server accepts.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The rule set of one server: the loopback names plus the `--allowed-host` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRules {
    /// `name` or `name:port`, lower case.
    allowed: Vec<String>,
}

impl HostRules {
    /// Rules with `extra` entries beside the loopback names; each is `name` or `name:port`.
    pub fn new(extra: &[String]) -> Result<HostRules, String> {
        let mut allowed = Vec::new();
        for entry in extra {
            let entry = entry.trim().to_ascii_lowercase();
            let (name, port) = split_authority(&entry);
            if name.is_empty() || entry.contains('/') || entry.contains('@') || port.is_some_and(|p| p.is_none()) {
                return Err(format!("--allowed-host {entry:?} must be a host name or IP, optionally with :port"));
            }
            allowed.push(entry);
        }
        Ok(HostRules { allowed })
    }

    /// Whether a `Host` header value (`name[:port]`) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let (name, port) = split_authority(&host);
        if port.is_some_and(|p| p.is_none()) {
            return false;
        }
        LOOPBACK_NAMES.contains(&name)
            || self.allowed.iter().any(|entry| match split_authority(entry) {
                (allowed_name, None) => allowed_name == name,
                (_, Some(_)) => *entry == host,
            })
    }

    /// Whether a request with this `Origin` (if any) and `Host` may change state or open `/ws`.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let Some(authority) =
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).map(str::to_ascii_lowercase)
        else {
            // `null` (sandboxed frames, file: pages) and other schemes are never the web app.
            return false;
        };
        let default_port = if origin.starts_with("https://") { "443" } else { "80" };
        let with_port = |authority: &str| match split_authority(authority) {
            (name, Some(Some(port))) => format!("{name}:{port}"),
            (name, _) => format!("{name}:{default_port}"),
        };
        let origin_authority = with_port(&authority);
        let same_origin = host.is_some_and(|host| with_port(&host.trim().to_ascii_lowercase()) == origin_authority);
        (same_origin && self.host_allowed(&authority))
            || self.allowed.iter().any(|entry| split_authority(entry).1.is_some() && *entry == origin_authority)
    }
}

/// `name[:port]` → (name, port): `None` = no port, `Some(None)` = a port that is not a number.
fn split_authority(authority: &str) -> (&str, Option<Option<u16>>) {
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => {
                let (name, after) = authority.split_at(end + 2);
                (name, after.strip_prefix(':'))
            }
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    (name, port.map(|p| p.parse::<u16>().ok()))
}

/// Rejects requests whose `Host` is not this server's, and state-changing or WebSocket requests
/// from another origin.
pub async fn check_host_and_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let rules = &state.config().host_rules;
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    // HTTP/1.1 clients always send Host; a request without one (HTTP/1.0 tools) names no site.
    if let Some(host) = host
        && !rules.host_allowed(host)
    {
        return AppError::Forbidden {
            code: "host_not_allowed",
            message: format!(
                "this server answers to localhost, 127.0.0.1 and [::1] only, not {host:?}; start it with \
                 --allowed-host NAME to reach it under another name"
            ),
        }
        .into_response();
    }
    let path = request.uri().path();
    let guarded = path == attune_shared::WS_PATH
        || ((path.starts_with("/api/") || path.starts_with("/v1/"))
            && !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS));
    if guarded {
        let origin = request.headers().get(header::ORIGIN).map(|v| v.to_str().unwrap_or("invalid"));
        if !rules.origin_allowed(origin, host) {
            return AppError::Forbidden {
                code: "cross_origin",
                message: format!(
                    "requests from the page at {} may not change this server's state or open its WebSocket",
                    origin.unwrap_or("?")
                ),
            }
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_pass_and_others_need_an_entry() {
        let rules = HostRules::new(&["box.lan".into(), "10.0.0.2:9000".into()]).unwrap();
        for host in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST", "box.lan:1234", "10.0.0.2:9000"] {
            assert!(rules.host_allowed(host), "{host}");
        }
        for host in ["evil.example:8080", "127.0.0.1.evil.example", "10.0.0.2:9001", "localhost:xx", "", "[::1"] {
            assert!(!rules.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn only_the_same_origin_or_a_listed_one_may_write() {
        let rules = HostRules::new(&["127.0.0.1:8081".into()]).unwrap();
        assert!(rules.origin_allowed(None, Some("127.0.0.1:8080")));
        assert!(rules.origin_allowed(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(rules.origin_allowed(Some("http://localhost"), Some("localhost:80")));
        assert!(rules.origin_allowed(Some("http://127.0.0.1:8081"), Some("127.0.0.1:8080")));
        assert!(!rules.origin_allowed(Some("http://evil.example"), Some("127.0.0.1:8080")));
        assert!(!rules.origin_allowed(Some("http://localhost:3000"), Some("127.0.0.1:8080")));
        assert!(!rules.origin_allowed(Some("null"), Some("127.0.0.1:8080")));
        assert!(!rules.origin_allowed(Some("http://evil.example:8080"), Some("evil.example:8080")));
    }

    #[test]
    fn entries_are_names_with_an_optional_port() {
        assert!(HostRules::new(&["box.lan".into(), "[::2]:80".into()]).is_ok());
        for bad in ["", "http://box", "box:port", "a@b"] {
            assert!(HostRules::new(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
