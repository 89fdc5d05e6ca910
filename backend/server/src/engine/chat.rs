//! The chat engine: a compute thread of its own (so chat answers while a job trains) that owns the
//! loaded model pairs and their passage indexes, fed by a command channel. A question is answered
//! as events: the retrieved passages first, then the answer token by token, then a done event;
//! a stop flag ends generation early. Questions from the web app go before those from the
//! OpenAI-compatible API (`/v1`), whose queue is bounded, so API traffic cannot starve the
//! person at the chat page; embedding requests (`/v1/embeddings`) run here too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use attune_shared::{ChatStats, Citation, RetrievalMethod};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;

use super::EngineError;
use crate::model::generator::{GenerationConfig, Generator};
use crate::model::retriever::{Retriever, TextRole};
use crate::rag::bm25::Bm25Index;
use crate::rag::hybrid::{self, FUSION_DEPTH};
use crate::rag::index::{ExactIndex, IndexKey, VectorIndex};
use crate::rag::prompt::{PromptLimits, chat_prompt};
use crate::store::Store;
use crate::store::jobs::IndexedPassage;

/// A retriever + generator pair with optional adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSpec {
    /// `base` or `run:ID`.
    pub id: String,
    pub retriever: PathBuf,
    pub retriever_adapter: Option<PathBuf>,
    pub generator: PathBuf,
    pub generator_adapter: Option<PathBuf>,
}

fn modified(path: &Option<PathBuf>) -> String {
    let Some(dir) = path else { return String::new() };
    let file = dir.join(crate::model::lora::ADAPTER_WEIGHTS);
    let stamp = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
    let nanos = stamp.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos());
    format!("{}@{}", dir.display(), nanos.unwrap_or(0))
}

/// A retriever with its adapter's version: an index built for another is stale.
fn retriever_key(retriever: &std::path::Path, adapter: &Option<PathBuf>) -> String {
    format!("{}+{}", retriever.display(), modified(adapter))
}

impl PairSpec {
    /// Names the retriever with its adapter's version: an index built for another is stale.
    pub fn retriever_key(&self) -> String {
        retriever_key(&self.retriever, &self.retriever_adapter)
    }

    fn generator_key(&self) -> String {
        format!("{}+{}", self.generator.display(), modified(&self.generator_adapter))
    }
}

/// What answering a question produces, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// The index is being (re)built for this retriever.
    IndexProgress {
        done: u64,
        total: u64,
    },
    Passages(Vec<Citation>),
    Token(String),
    Done {
        stopped: bool,
        answer: String,
        stats: ChatStats,
    },
    Error {
        code: &'static str,
        message: String,
    },
}

/// One question.
pub struct Question {
    pub pair: PairSpec,
    pub question: String,
    /// Earlier (question, answer) turns of this chat.
    pub history: Vec<(String, String)>,
    pub top_k: usize,
    /// Temperature, length and repetition penalty (validated by the caller).
    pub options: attune_shared::ChatOptions,
    /// Strings that end the answer (not included in it).
    pub stop_sequences: Vec<String>,
    pub stop: Arc<AtomicBool>,
    pub events: UnboundedSender<ChatEvent>,
}

/// Who asks: the web app's chat goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    WebApp,
    Api,
}

/// Texts to embed with a pair's retriever (its generator is not loaded for this).
pub struct EmbedRequest {
    pub retriever: PathBuf,
    pub retriever_adapter: Option<PathBuf>,
    pub texts: Vec<String>,
    pub role: TextRole,
    pub reply: tokio::sync::oneshot::Sender<Result<Embedded, (&'static str, String)>>,
}

/// Embeddings, one row per text, and the tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
}

/// Requests from the API waiting or running at once; more are refused (HTTP 429), not queued.
pub const MAX_API_REQUESTS: usize = 8;

/// Passages the prompt carries: the best one, as training (RAG-Sequence, one passage a prompt) and
/// evaluation use it; the others are shown as citations.
pub const PASSAGES_IN_PROMPT: usize = 1;
/// Turns of history the prompt keeps.
pub const HISTORY_TURNS: usize = 3;

enum Command {
    Ask(Box<Question>),
    Embed(EmbedRequest),
}

/// Handle of the chat thread.
#[derive(Clone, Debug)]
pub struct ChatEngine {
    commands: std::sync::mpsc::Sender<(Lane, Command)>,
    /// API requests queued or running.
    api_load: Arc<std::sync::atomic::AtomicUsize>,
    monitor: super::health::ThreadMonitor,
}

/// A place in the API's bounded queue, given back when the request ends (answered, failed or
/// dropped with the command).
pub struct ApiSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ApiSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Commands waiting on the chat thread, the web app's first.
#[derive(Default)]
struct Waiting {
    web_app: std::collections::VecDeque<Command>,
    api: std::collections::VecDeque<Command>,
}

impl Waiting {
    fn push(&mut self, lane: Lane, command: Command) {
        match lane {
            Lane::WebApp => self.web_app.push_back(command),
            Lane::Api => self.api.push_back(command),
        }
    }

    fn next(&mut self) -> Option<Command> {
        self.web_app.pop_front().or_else(|| self.api.pop_front())
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Where the chat thread finds passages and keeps indexes.
pub struct ChatContext {
    pub store: Store,
    pub runtime: Handle,
    /// Indexes are saved under here, one folder per retriever.
    pub index_dir: PathBuf,
    pub device_spec: String,
}

impl ChatEngine {
    pub fn start(context: ChatContext) -> Result<ChatEngine, EngineError> {
        let (commands, received) = std::sync::mpsc::channel();
        let monitor = super::health::ThreadMonitor::new("chat");
        let thread_monitor = monitor.clone();
        std::thread::Builder::new()
            .name("attune-chat".into())
            .spawn(move || {
                let mut state = ChatThread { context, pairs: Vec::new(), indexes: HashMap::new(), retriever: None };
                let mut waiting = Waiting::default();
                loop {
                    // Everything sent so far joins its lane; block only when nothing waits.
                    while let Ok((lane, command)) = received.try_recv() {
                        waiting.push(lane, command);
                    }
                    let command = match waiting.next() {
                        Some(command) => command,
                        // Ends when every handle is dropped.
                        None => match received.recv() {
                            Ok((lane, command)) => {
                                waiting.push(lane, command);
                                continue;
                            }
                            Err(_) => break,
                        },
                    };
                    state.run(command, &thread_monitor);
                }
                thread_monitor.set_state("stopped");
            })
            .map_err(|e| EngineError::Task(format!("cannot start the chat thread: {e}")))?;
        Ok(ChatEngine { commands, api_load: Arc::default(), monitor })
    }

    /// The chat thread's state, for `/api/v1/health`.
    pub fn health(&self) -> attune_shared::ThreadHealth {
        self.monitor.health()
    }

    /// Queues a question; its answer arrives on `question.events`.
    pub fn ask(&self, lane: Lane, question: Question) -> Result<(), EngineError> {
        self.send(lane, Command::Ask(Box::new(question)))
    }

    /// Queues texts to embed; the vectors arrive on `request.reply`.
    pub fn embed(&self, lane: Lane, request: EmbedRequest) -> Result<(), EngineError> {
        self.send(lane, Command::Embed(request))
    }

    /// A place in the API's queue, or `None` when [`MAX_API_REQUESTS`] are already waiting or
    /// running; hold it until the request's reply is complete.
    pub fn api_slot(&self) -> Option<ApiSlot> {
        let taken = self.api_load.fetch_add(1, Ordering::SeqCst);
        let slot = ApiSlot(self.api_load.clone());
        (taken < MAX_API_REQUESTS).then_some(slot)
    }

    fn send(&self, lane: Lane, command: Command) -> Result<(), EngineError> {
        self.commands.send((lane, command)).map_err(|_| EngineError::Task("the chat thread has stopped".into()))
    }
}

struct LoadedPair {
    retriever_key: String,
    generator_key: String,
    retriever: Retriever,
    generator: Generator,
}

struct LoadedIndex {
    index: ExactIndex,
    /// BM25 over the same passages (in memory, built when first asked for); its positions are
    /// those of `lexical_ids`.
    lexical: Option<crate::rag::bm25::Bm25Index>,
    lexical_ids: Vec<i64>,
    passages: HashMap<i64, IndexedPassage>,
}

struct ChatThread {
    context: ChatContext,
    /// Most recently used last; at most [`MAX_PAIRS`].
    pairs: Vec<LoadedPair>,
    /// By retriever key.
    indexes: HashMap<String, LoadedIndex>,
    /// The last retriever loaded alone for embeddings, by key.
    retriever: Option<(String, Retriever)>,
}

/// Model pairs kept loaded (base and tuned side by side).
const MAX_PAIRS: usize = 2;

type Failure = (&'static str, String);

fn failure<E: std::fmt::Display>(code: &'static str) -> impl Fn(E) -> Failure {
    move |e| (code, e.to_string())
}

/// A short, stable folder name for a retriever key.
fn folder_name(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl ChatThread {
    /// Runs one command; a failure (or a caught panic) goes to the command's own reply.
    fn run(&mut self, command: Command, monitor: &super::health::ThreadMonitor) {
        match command {
            Command::Ask(question) => {
                let events = question.events.clone();
                match monitor.run("a chat question", || Ok(self.answer(*question))) {
                    Ok(Ok(())) => {}
                    Ok(Err((code, message))) => {
                        let _ = events.send(ChatEvent::Error { code, message });
                    }
                    Err(panic) => {
                        self.forget_models();
                        let _ = events.send(ChatEvent::Error { code: "internal_error", message: panic.to_string() });
                    }
                }
            }
            Command::Embed(request) => {
                let EmbedRequest { retriever, retriever_adapter, texts, role, reply } = request;
                let outcome = monitor
                    .run("an embedding request", || Ok(self.embed(&retriever, &retriever_adapter, &texts, role)));
                let outcome = match outcome {
                    Ok(result) => result,
                    Err(panic) => {
                        self.forget_models();
                        Err(("internal_error", panic.to_string()))
                    }
                };
                let _ = reply.send(outcome);
            }
        }
    }

    /// The loaded models may be half-changed after a panic: load them afresh next time.
    fn forget_models(&mut self) {
        self.pairs.clear();
        self.indexes.clear();
        self.retriever = None;
    }

    fn embed(
        &mut self,
        path: &std::path::Path,
        adapter: &Option<PathBuf>,
        texts: &[String],
        role: TextRole,
    ) -> Result<Embedded, Failure> {
        let key = retriever_key(path, adapter);
        let loaded_in_pair = self.pairs.iter().position(|p| p.retriever_key == key);
        if loaded_in_pair.is_none() && self.retriever.as_ref().is_none_or(|(k, _)| *k != key) {
            let device = crate::model::device::select(&self.context.device_spec).map_err(failure("device"))?;
            let mut retriever = Retriever::load(path, &device).map_err(failure("model_load_failed"))?;
            if let Some(adapter) = adapter {
                retriever.load_adapter(adapter).map_err(failure("model_load_failed"))?;
            }
            self.retriever = Some((key, retriever));
        }
        let retriever = match loaded_in_pair {
            Some(at) => &self.pairs[at].retriever,
            None => &self.retriever.as_ref().expect("loaded above").1,
        };
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mask = retriever.tokenize(&refs, role).map_err(failure("model_failed"))?.attention_mask;
        let tokens = mask.sum_all().and_then(|t| t.to_scalar::<f32>()).map_err(failure("model_failed"))? as u64;
        let matrix = retriever.embed(&refs, role, 32).map_err(failure("model_failed"))?;
        let vectors = matrix.to_vec2::<f32>().map_err(failure("model_failed"))?;
        Ok(Embedded { vectors, tokens })
    }

    fn pair(&mut self, spec: &PairSpec) -> Result<&LoadedPair, Failure> {
        let (rk, gk) = (spec.retriever_key(), spec.generator_key());
        if let Some(at) = self.pairs.iter().position(|p| p.retriever_key == rk && p.generator_key == gk) {
            let pair = self.pairs.remove(at);
            self.pairs.push(pair);
        } else {
            let device = crate::model::device::select(&self.context.device_spec).map_err(failure("device"))?;
            let mut retriever = Retriever::load(&spec.retriever, &device).map_err(failure("model_load_failed"))?;
            if let Some(adapter) = &spec.retriever_adapter {
                retriever.load_adapter(adapter).map_err(failure("model_load_failed"))?;
            }
            let mut generator = Generator::load(&spec.generator, &device).map_err(failure("model_load_failed"))?;
            if let Some(adapter) = &spec.generator_adapter {
                generator.load_adapter(adapter).map_err(failure("model_load_failed"))?;
            }
            if self.pairs.len() >= MAX_PAIRS {
                self.pairs.remove(0);
            }
            self.pairs.push(LoadedPair { retriever_key: rk, generator_key: gk, retriever, generator });
        }
        Ok(self.pairs.last().expect("just pushed"))
    }

    /// The index for the pair's retriever at the store's current passages: kept, loaded from disk,
    /// or built (with progress) and saved.
    fn ensure_index(&mut self, spec: &PairSpec, events: &UnboundedSender<ChatEvent>) -> Result<(), Failure> {
        let store = self.context.store.clone();
        let revision = self.context.runtime.block_on(store.corpus_revision()).map_err(failure("store"))?;
        let key = IndexKey { retriever: spec.retriever_key(), revision };
        if self.indexes.get(&key.retriever).is_some_and(|i| i.index.key() == &key) {
            return Ok(());
        }
        let passages = self.context.runtime.block_on(store.indexed_passages()).map_err(failure("store"))?;
        if passages.is_empty() {
            return Err(("no_passages", "there are no passages to search: upload documents first".into()));
        }
        let dir = self.context.index_dir.join(folder_name(&key.retriever));
        let pair = self.pair(spec)?;
        let device = pair.retriever.model().device().clone();
        let index = match ExactIndex::load(&dir, &key, &device) {
            Ok(Some(index)) => index,
            loaded => {
                if let Err(e) = loaded {
                    tracing::warn!("rebuilding the passage index: {e}");
                }
                let texts: Vec<(i64, &str)> = passages.iter().map(|p| (p.id, p.text.as_str())).collect();
                let index = ExactIndex::build(key.clone(), &pair.retriever, &texts, 32, &mut |done, total| {
                    let _ = events.send(ChatEvent::IndexProgress { done: done as u64, total: total as u64 });
                })
                .map_err(failure("index_failed"))?;
                if let Err(e) = index.save(&dir) {
                    tracing::warn!("cannot save the passage index: {e}");
                }
                index
            }
        };
        let lexical_ids = passages.iter().map(|p| p.id).collect();
        let passages = passages.into_iter().map(|p| (p.id, p)).collect();
        self.indexes.insert(key.retriever.clone(), LoadedIndex { index, lexical: None, lexical_ids, passages });
        Ok(())
    }

    fn answer(&mut self, question: Question) -> Result<(), Failure> {
        let started = Instant::now();
        let Question { pair: spec, question, history, top_k, options, stop_sequences, stop, events } = question;
        self.pair(&spec)?;
        self.ensure_index(&spec, &events)?;
        let rk = spec.retriever_key();
        let index = self.indexes.get_mut(&rk).expect("ensured above");
        let lexical = match options.retrieval {
            RetrievalMethod::Dense => Vec::new(),
            RetrievalMethod::Bm25 | RetrievalMethod::Hybrid => {
                if index.lexical.is_none() {
                    let texts: Vec<String> =
                        index.lexical_ids.iter().map(|id| index.passages[id].text.clone()).collect();
                    index.lexical = Some(Bm25Index::build(&texts).map_err(failure("index_failed"))?);
                }
                let bm25 = index.lexical.as_ref().expect("built above");
                let hits = bm25.search(&question, FUSION_DEPTH).map_err(failure("index_failed"))?;
                hits.into_iter().map(|(position, score)| (index.lexical_ids[position], score)).collect()
            }
        };
        let index = &self.indexes[&rk];
        let pair = self.pairs.last().expect("loaded above");
        let query = pair.retriever.embed(&[question.as_str()], TextRole::Query, 1).map_err(failure("model_failed"))?;
        // Every passage's cosine similarity: the dense ranking, and the score each citation shows.
        let dense = index.index.search(&query, index.index.len()).map_err(failure("index_failed"))?;
        let hits = hybrid::rank(options.retrieval, &dense, &lexical, top_k.max(1));
        let citations: Vec<Citation> = hits
            .iter()
            .filter_map(|hit| {
                let p = index.passages.get(&hit.id)?;
                Some(Citation {
                    passage_id: p.id,
                    document_id: p.document_id,
                    document: p.document.clone(),
                    page_start: p.page_start,
                    page_end: p.page_end,
                    score: hit.score,
                    text: p.text.clone(),
                })
            })
            .collect();
        let retrieval_ms = started.elapsed().as_secs_f64() * 1e3;
        let _ = events.send(ChatEvent::Passages(citations.clone()));
        let texts: Vec<&str> = citations.iter().take(PASSAGES_IN_PROMPT).map(|c| c.text.as_str()).collect();
        let recent = &history[history.len().saturating_sub(HISTORY_TURNS)..];
        let limits = PromptLimits { max_passage_tokens: 256, ..PromptLimits::default() };
        let prompt =
            chat_prompt(&pair.generator, recent, &question, &texts, limits).map_err(failure("model_failed"))?;
        let ids = pair.generator.encode(&prompt).map_err(failure("model_failed"))?;
        let config = GenerationConfig {
            max_new_tokens: options.max_tokens as usize,
            temperature: options.temperature,
            top_p: if options.temperature > 0.0 { 0.95 } else { 1.0 },
            seed: rand::random(),
            repetition_penalty: options.repetition_penalty as f32,
            stop_on_loop: true,
            stop: stop_sequences,
            allowed_tokens: Vec::new(),
            line_rule: None,
        };
        let mut first_token_at = None;
        let generation = pair
            .generator
            .generate(&ids, &config, |piece| {
                first_token_at.get_or_insert_with(Instant::now);
                let gone = events.send(ChatEvent::Token(piece.to_owned())).is_err();
                if gone || stop.load(Ordering::Relaxed) {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
            .map_err(failure("model_failed"))?;
        let tokens = generation.tokens.len() as u32;
        let first = first_token_at.unwrap_or_else(Instant::now);
        let decoding = first.elapsed().as_secs_f64();
        let stats = ChatStats {
            retrieval_ms,
            first_token_ms: first.duration_since(started).as_secs_f64() * 1e3,
            tokens,
            prompt_tokens: ids.len() as u32,
            // Decoding speed: the tokens after the first, over the time since the first.
            tokens_per_second: if decoding > 0.0 && tokens > 1 { f64::from(tokens - 1) / decoding } else { 0.0 },
            hit_cap: generation.stop_reason == crate::model::generator::StopReason::MaxNewTokens,
            stopped_repeating: generation.stop_reason == crate::model::generator::StopReason::Repetition,
        };
        let stopped = generation.stop_reason == crate::model::generator::StopReason::Cancelled;
        let _ = events.send(ChatEvent::Done { stopped, answer: generation.text, stats });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed_command(tag: &str) -> Command {
        let (reply, _) = tokio::sync::oneshot::channel();
        Command::Embed(EmbedRequest {
            retriever: PathBuf::from(tag),
            retriever_adapter: None,
            texts: Vec::new(),
            role: TextRole::Query,
            reply,
        })
    }

    fn tag(command: Option<Command>) -> String {
        match command {
            Some(Command::Embed(request)) => request.retriever.display().to_string(),
            Some(Command::Ask(_)) => "ask".into(),
            None => "none".into(),
        }
    }

    #[test]
    fn the_web_app_goes_before_the_api_and_each_lane_keeps_its_order() {
        let mut waiting = Waiting::default();
        waiting.push(Lane::Api, embed_command("api 1"));
        waiting.push(Lane::Api, embed_command("api 2"));
        waiting.push(Lane::WebApp, embed_command("page 1"));
        waiting.push(Lane::WebApp, embed_command("page 2"));
        let order: Vec<String> = (0..5).map(|_| tag(waiting.next())).collect();
        assert_eq!(order, ["page 1", "page 2", "api 1", "api 2", "none"]);
    }

    #[test]
    fn the_api_queue_is_bounded_and_a_finished_request_frees_its_place() {
        let load = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (commands, _received) = std::sync::mpsc::channel();
        let engine =
            ChatEngine { commands, api_load: load.clone(), monitor: super::super::health::ThreadMonitor::new("t") };
        let held: Vec<ApiSlot> = (0..MAX_API_REQUESTS).map(|_| engine.api_slot().expect("a free place")).collect();
        assert!(engine.api_slot().is_none(), "one more than the bound is refused");
        assert_eq!(load.load(Ordering::SeqCst), MAX_API_REQUESTS, "a refusal takes no place");
        drop(held.into_iter().next());
        assert!(engine.api_slot().is_some(), "a finished request frees its place");
    }
}
