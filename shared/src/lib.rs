//! Wire types exchanged between the Attune backend and its browser frontend.
//!
//! Rules that keep old clients and servers talking to each other:
//! - every message enum is internally tagged (`{"type": "..."}`), names in `snake_case`;
//! - fields are only ever added, and every added field has a `#[serde(default)]`;
//! - a breaking change bumps [`PROTOCOL_VERSION`], which the WebSocket `hello` carries.

use serde::{Deserialize, Serialize};

/// Version of the WebSocket protocol; sent in [`ServerMessage::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Prefix of every REST route.
pub const API_PREFIX: &str = "/api/v1";

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";

/// Query parameter that may carry the bearer token on the WebSocket upgrade
/// (browsers cannot set headers on `new WebSocket(..)`).
pub const WS_TOKEN_PARAM: &str = "token";

/// Body of every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// With a `version_conflict` (409): the triple as it is now, so the client can show both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Box<Triple>>,
}

/// A machine-readable `code` (snake_case, stable) and a sentence for people; `type` is OpenAI's
/// error class (`invalid_request_error`, `authentication_error`, ...), so that OpenAI clients of
/// `/v1` read Attune's errors as their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Version of the `attune` binary.
    pub version: String,
    /// Model folders found in the models directory.
    #[serde(default)]
    pub models: Vec<ModelInfo>,
    /// Where model math runs.
    pub device: ComputeDevice,
    #[serde(default)]
    pub database: DatabaseHealth,
    /// The server's long-lived compute threads (job worker, chat) and synthesis runs.
    #[serde(default)]
    pub threads: Vec<ThreadHealth>,
}

/// One compute thread's state in `/api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ThreadHealth {
    /// `jobs`, `chat` or `synthesis`.
    pub name: String,
    /// `idle`, `busy: …` (what it works on) or `stopped`.
    pub state: String,
    /// Panics caught (each failed only its own job or question).
    pub panics: u32,
    /// The last caught panic's message.
    pub last_panic: Option<String>,
}

/// One model folder the backend can use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Folder name, e.g. `all-MiniLM-L6-v2`.
    pub name: String,
    /// Absolute path of the folder on the server.
    pub path: String,
    pub kind: ModelKind,
    /// How the weights are stored.
    pub format: WeightFormat,
    /// `model_type` of `config.json` or `general.architecture` of a GGUF file, when known.
    #[serde(default)]
    pub architecture: Option<String>,
}

/// What a model is used for in a RAG system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A BERT-family embedding model.
    Retriever,
    /// A causal language model.
    Generator,
}

/// File format of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    Safetensors,
    PytorchBin,
    Gguf,
}

/// The device model math runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ComputeDevice {
    Cpu,
    Cuda { ordinal: usize },
}

impl ComputeDevice {
    /// Short label for people, e.g. `cpu` or `cuda:0`.
    pub fn label(&self) -> String {
        match self {
            ComputeDevice::Cpu => "cpu".to_owned(),
            ComputeDevice::Cuda { ordinal } => format!("cuda:{ordinal}"),
        }
    }
}

/// Whether the SQLite database answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseHealth {
    pub ok: bool,
    /// Number of the latest applied migration.
    #[serde(default)]
    pub schema_version: i64,
}

/// Project-wide settings, `GET`/`PUT /api/v1/settings`. Stored in SQLite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Passage length in tokens of the retriever's tokenizer.
    pub chunk_tokens: u32,
    /// Tokens shared by consecutive passages; less than `chunk_tokens`.
    pub chunk_overlap: u32,
    /// Synthetic questions written per passage.
    pub questions_per_passage: u32,
    /// Base URL of an OpenAI-compatible server for synthesis; `None` = the local generator.
    pub llm_base_url: Option<String>,
    /// Model name to ask that server for.
    pub llm_model: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { chunk_tokens: 256, chunk_overlap: 32, questions_per_passage: 3, llm_base_url: None, llm_model: None }
    }
}

impl Settings {
    /// Checks the values that types alone cannot; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=8192).contains(&self.chunk_tokens) {
            return Err(format!("chunk_tokens must be between 16 and 8192 (got {})", self.chunk_tokens));
        }
        if self.chunk_overlap >= self.chunk_tokens {
            return Err(format!(
                "chunk_overlap ({}) must be smaller than chunk_tokens ({})",
                self.chunk_overlap, self.chunk_tokens
            ));
        }
        if !(1..=20).contains(&self.questions_per_passage) {
            return Err(format!("questions_per_passage must be between 1 and 20 (got {})", self.questions_per_passage));
        }
        if let Some(url) = &self.llm_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!("llm_base_url must start with http:// or https:// (got {url:?})"));
        }
        if self.llm_base_url.is_some() != self.llm_model.is_some() {
            return Err("llm_base_url and llm_model must be set together".to_owned());
        }
        Ok(())
    }
}

mod corpus;
pub use corpus::*;
mod jobs;
pub use jobs::*;

/// Messages the server sends on `/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A wire enum: messages are built, sent and dropped, so the largest variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ServerMessage {
    /// First message on every connection.
    Hello { protocol_version: u32, server_version: String },
    /// Answer to [`ClientMessage::Ping`], echoing its nonce.
    Pong { nonce: u64 },
    /// The client sent something the server could not understand.
    Error { code: String, message: String },
    /// A synthesis run changed: progress, or a new state. `eta_seconds` while it runs.
    SynthProgress {
        run: SynthRun,
        #[serde(default)]
        eta_seconds: Option<f64>,
    },
    /// A training run was queued, started, finished, failed, was cancelled or resumed. Sent first,
    /// for every unfinished run, to a client that connects.
    RunState { run: Run },
    /// A training step's figures (at most a few a second; `GET /runs/:id/metrics` has every step).
    TrainStep { run_id: i64, point: StepPoint },
    /// A run saved a checkpoint it can resume from.
    Checkpoint { run_id: i64, step: u32, path: String },
    /// A line of a job's log.
    JobLog { job: String, level: LogLevel, message: String },
    /// An evaluation changed: progress, a new state, or its report (fetch it from `/evals/:id`).
    EvalState { eval: Box<Eval> },
    /// An adapt job (`POST /api/v1/adapt`) changed stage or state; each stage's own job reports
    /// its progress in its own messages.
    AdaptState { adapt: Box<AdaptJob> },
    /// The passage index of a retriever is being built.
    IndexProgress { model: String, done: u64, total: u64 },
    /// The passages retrieved for a chat question (always before its tokens).
    ChatPassages { chat_id: String, request_id: u64, passages: Vec<Citation> },
    /// The next piece of a chat answer.
    ChatToken { chat_id: String, request_id: u64, text: String },
    /// The answer is complete (or was stopped).
    ChatDone {
        chat_id: String,
        request_id: u64,
        stopped: bool,
        #[serde(default)]
        stats: ChatStats,
    },
    /// The question could not be answered.
    ChatError { chat_id: String, request_id: u64, code: String, message: String },
}

/// Severity of a [`ServerMessage::JobLog`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// Messages a client sends on `/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Liveness check; the server answers [`ServerMessage::Pong`].
    Ping { nonce: u64 },
    /// Ask a question in chat `chat_id` (its history is kept on this connection) with the model pair
    /// `model` (an id from `GET /api/v1/models`). Answered by `chat_passages`, `chat_token`s and
    /// `chat_done` (or `chat_error`), all carrying `request_id`.
    ChatAsk {
        chat_id: String,
        request_id: u64,
        model: String,
        question: String,
        #[serde(default)]
        top_k: Option<u32>,
        #[serde(default)]
        options: ChatOptions,
    },
    /// Stop the answer being generated in `chat_id`.
    ChatStop { chat_id: String },
    /// Forget the history of `chat_id`.
    ChatClear { chat_id: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_internally_tagged() {
        let hello = ServerMessage::Hello { protocol_version: PROTOCOL_VERSION, server_version: "0.1.0".into() };
        let json = serde_json::to_value(&hello).unwrap();
        assert_eq!(json["type"], "hello");
        assert_eq!(json["protocol_version"], 1);
        assert_eq!(serde_json::from_value::<ServerMessage>(json).unwrap(), hello);
    }

    #[test]
    fn health_from_an_older_server_still_parses() {
        // Fields added later must have defaults, so a minimal body parses.
        let health: Health = serde_json::from_str(r#"{"version":"0.0.1","device":{"type":"cpu"}}"#).unwrap();
        assert!(health.models.is_empty());
        assert!(!health.database.ok);
    }

    #[test]
    fn settings_validation_rejects_overlap_not_below_chunk() {
        let s = Settings { chunk_overlap: 256, ..Settings::default() };
        assert!(s.validate().unwrap_err().contains("chunk_overlap"));
        assert!(Settings::default().validate().is_ok());
        let half = Settings { llm_base_url: Some("http://127.0.0.1:1".into()), ..Settings::default() };
        assert!(half.validate().is_err());
    }

    #[test]
    fn job_statuses_round_trip_through_their_names() {
        for status in [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::Interrupted,
        ] {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(JobStatus::parse("paused"), None);
    }

    #[test]
    fn settings_reject_unknown_fields() {
        assert!(serde_json::from_str::<Settings>(r#"{"chunk_tokenz":3}"#).is_err());
        let partial: Settings = serde_json::from_str(r#"{"chunk_tokens":128}"#).unwrap();
        assert_eq!(partial.chunk_tokens, 128);
        assert_eq!(partial.chunk_overlap, 32);
    }
}
