//! The OpenAI-compatible chat-completions client behind synthesis's [`Llm`] trait: timeouts,
//! retries with backoff on timeouts, 429 and 5xx, and bounded concurrency (blocking HTTP on a few
//! threads, so the synthesis thread calls it like the local model).

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

impl OpenAiSettings {
    pub fn new(base_url: &str, model: &str) -> Self {
        OpenAiSettings {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key: std::env::var("ATTUNE_LLM_API_KEY").ok().filter(|k| !k.is_empty()),
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_millis(500),
            concurrency: 4,
        }
    }
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
                    let value: serde_json::Value =
                        response.json().map_err(|e| error(format!("unreadable reply: {e}")))?;
                    return value["choices"][0]["message"]["content"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| error(format!("no choices[0].message.content in the reply: {value}")));
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().unwrap_or_default();
                    let message = format!("HTTP {status}: {}", text.chars().take(300).collect::<String>());
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
