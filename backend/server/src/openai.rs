//! The OpenAI-compatible chat-completions client behind synthesis's [`Llm`] trait: timeouts,
//! retries with backoff on timeouts, 429 and 5xx, and bounded concurrency (blocking HTTP on a few
//! threads, so the synthesis thread calls it like the local model).
//!
//! The server's replies are untrusted: each is read up to [`MAX_REPLY_BYTES`], and what it said
//! (error bodies, malformed JSON) goes to the log, never into a message a client sees. The API key
//! goes only to the server the user configured ([`OpenAiSettings::with_key_for`]).

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::synth::{Llm, SynthError};

/// How to reach an OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Up to and including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// Tries per request beyond the first, on timeouts, 429 and 5xx.
    pub retries: u32,
    pub backoff: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
}

/// The largest reply read from the server; a longer one fails the request.
pub const MAX_REPLY_BYTES: u64 = 1 << 20;

/// `scheme://host:port` of a URL (the port made explicit), or `None` when it is not an http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Some(format!("{}://{}:{}", url.scheme(), url.host_str()?, url.port_or_known_default()?))
}

/// Whether two URLs share an origin (both must be http(s) URLs).
pub fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin_of(a), origin_of(b)), (Some(a), Some(b)) if a == b)
}

impl OpenAiSettings {
    /// Settings for `base_url` without an API key; see [`OpenAiSettings::with_key_for`].
    pub fn new(base_url: &str, model: &str) -> Self {
        OpenAiSettings {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key: None,
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_millis(500),
            concurrency: 4,
        }
    }

    /// Attaches `ATTUNE_LLM_API_KEY` when this server is the `configured` one (the setting or the
    /// command line's flag), so a URL from anywhere else never receives the key.
    pub fn with_key_for(self, configured: Option<&str>) -> Self {
        self.with_key(configured, std::env::var("ATTUNE_LLM_API_KEY").ok())
    }

    fn with_key(mut self, configured: Option<&str>, key: Option<String>) -> Self {
        if configured.is_some_and(|configured| same_origin(configured, &self.base_url)) {
            self.api_key = key.filter(|k| !k.is_empty());
        }
        self
    }
}

/// Reads at most [`MAX_REPLY_BYTES`] of a reply; `Err` says why in words a client may see.
fn read_capped(response: reqwest::blocking::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    response
        .take(MAX_REPLY_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("the reply could not be read ({e})"))?;
    if body.len() as u64 > MAX_REPLY_BYTES {
        return Err(format!("the reply is larger than {} KiB", MAX_REPLY_BYTES / 1024));
    }
    Ok(body)
}

/// Logs (the start of) what the server said, which never goes into a client-facing message.
fn log_reply(url: &str, what: &str, body: &[u8]) {
    tracing::warn!(url, "the LLM server answered {what}: {}", String::from_utf8_lossy(&body[..body.len().min(2000)]));
}

pub struct OpenAiLlm {
    settings: OpenAiSettings,
    client: reqwest::blocking::Client,
}

impl OpenAiLlm {
    pub fn new(settings: OpenAiSettings) -> Result<Self, SynthError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| SynthError::Server { url: settings.base_url.clone(), message: e.to_string() })?;
        Ok(OpenAiLlm { settings, client })
    }

    fn url(&self) -> String {
        format!("{}/chat/completions", self.settings.base_url)
    }

    fn one(&self, prompt: &str, max_tokens: usize) -> Result<String, SynthError> {
        let body = serde_json::json!({
            "model": self.settings.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        });
        let error = |message: String| SynthError::Server { url: self.url(), message };
        let mut attempt = 0;
        loop {
            let mut request = self.client.post(self.url()).json(&body);
            if let Some(key) = &self.settings.api_key {
                request = request.bearer_auth(key);
            }
            let retryable = match request.send() {
                Ok(response) if response.status().is_success() => {
                    let body = read_capped(response).map_err(error)?;
                    let value: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                    return match value.as_ref().and_then(|v| v["choices"][0]["message"]["content"].as_str()) {
                        Some(content) => Ok(content.to_owned()),
                        None => {
                            log_reply(&self.url(), "a reply that is not a chat completion", &body);
                            Err(error(
                                "the reply is not a chat completion with choices[0].message.content (it is in the \
                                 server's log)"
                                    .into(),
                            ))
                        }
                    };
                }
                Ok(response) => {
                    let status = response.status();
                    let body = read_capped(response).unwrap_or_default();
                    log_reply(&self.url(), &format!("HTTP {status}"), &body);
                    let message = format!("HTTP {status} (the server's reply is in the log)");
                    if status.as_u16() == 429 || status.is_server_error() {
                        message
                    } else {
                        return Err(error(message));
                    }
                }
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => e.to_string(),
                Err(e) => return Err(error(e.to_string())),
            };
            if attempt >= self.settings.retries {
                return Err(error(format!("{retryable} (after {} tries)", attempt + 1)));
            }
            std::thread::sleep(self.settings.backoff * 2u32.pow(attempt));
            attempt += 1;
        }
    }
}

impl Llm for OpenAiLlm {
    fn name(&self) -> String {
        self.settings.model.clone()
    }

    fn complete(&self, prompts: &[String], max_tokens: usize) -> Result<Vec<Result<String, SynthError>>, SynthError> {
        let next = AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<String, SynthError>>>> =
            prompts.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..self.settings.concurrency.clamp(1, prompts.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(prompt) = prompts.get(i) else { break };
                        let result = self.one(prompt, max_tokens);
                        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    }
                });
            }
        });
        Ok(results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err(SynthError::Server { url: self.url(), message: "no reply".into() }))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn the_key_goes_only_to_the_configured_origin() {
        let key = || Some("sk-test".to_owned());
        let to =
            |url: &str, configured: Option<&str>| OpenAiSettings::new(url, "m").with_key(configured, key()).api_key;
        assert_eq!(to("http://127.0.0.1:8000/v1", Some("http://127.0.0.1:8000/v1/")), key());
        assert_eq!(to("https://llm.example/v1", Some("https://llm.example:443/other")), key());
        assert_eq!(to("http://evil.example/v1", Some("http://127.0.0.1:8000/v1")), None);
        assert_eq!(to("http://127.0.0.1:8001/v1", Some("http://127.0.0.1:8000/v1")), None);
        assert_eq!(to("http://127.0.0.1:8000/v1", None), None);
        assert!(!same_origin("file:///etc/passwd", "file:///etc/passwd"));
    }

    /// A one-request HTTP server answering `reply`; returns its base URL and the request's head.
    fn one_reply(reply: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = stream;
            let _ = stream.write_all(&reply);
            head
        });
        (url, thread)
    }

    fn http(status: &str, body: &[u8]) -> Vec<u8> {
        let mut reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        reply.extend_from_slice(body);
        reply
    }

    fn client(url: &str, key: Option<&str>) -> OpenAiLlm {
        let settings = OpenAiSettings { api_key: key.map(str::to_owned), retries: 0, ..OpenAiSettings::new(url, "m") };
        OpenAiLlm::new(settings).unwrap()
    }

    #[test]
    fn an_error_body_is_logged_not_echoed() {
        let (url, server) = one_reply(http("400 Bad Request", br#"{"error":"SECRET-UPSTREAM-DETAIL"}"#));
        let error = client(&url, Some("sk-1")).one("q", 8).unwrap_err().to_string();
        assert!(error.contains("HTTP 400"), "{error}");
        assert!(!error.contains("SECRET-UPSTREAM-DETAIL"), "{error}");
        assert!(server.join().unwrap().to_ascii_lowercase().contains("authorization: bearer sk-1"));
    }

    #[test]
    fn a_malformed_reply_is_logged_not_echoed() {
        let (url, server) = one_reply(http("200 OK", br#"{"choices":"SECRET-UPSTREAM-DETAIL"}"#));
        let error = client(&url, None).one("q", 8).unwrap_err().to_string();
        assert!(error.contains("not a chat completion"), "{error}");
        assert!(!error.contains("SECRET-UPSTREAM-DETAIL"), "{error}");
        assert!(!server.join().unwrap().to_ascii_lowercase().contains("authorization"));
    }

    #[test]
    fn a_reply_over_the_cap_fails() {
        let content = "x".repeat(MAX_REPLY_BYTES as usize + 10);
        let body = format!(r#"{{"choices":[{{"message":{{"content":"{content}"}}}}]}}"#);
        let (url, server) = one_reply(http("200 OK", body.as_bytes()));
        let error = client(&url, None).one("q", 8).unwrap_err().to_string();
        assert!(error.contains("larger than 1024 KiB"), "{error}");
        server.join().unwrap();
        let (url, server) = one_reply(http("200 OK", br#"{"choices":[{"message":{"content":"fine"}}]}"#));
        assert_eq!(client(&url, None).one("q", 8).unwrap(), "fine");
        server.join().unwrap();
    }
}
