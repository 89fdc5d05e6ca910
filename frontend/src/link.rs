//! The live link to the backend: one WebSocket, kept open, reconnected with backoff,
//! its state exposed as a signal for the header's indicator.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use gloo_timers::callback::{Interval, Timeout};
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use attune_shared::{ClientMessage, Eval, JobStatus, PROTOCOL_VERSION, Run, ServerMessage, SynthRun};

use crate::backoff::Backoff;
use crate::endpoints::ws_url;

/// Interval between heartbeat pings.
const HEARTBEAT_MS: u32 = 15_000;
/// A link that has heard nothing for this long is considered dead and reopened.
const SILENCE_LIMIT_MS: f64 = 40_000.0;

/// What the indicator shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    /// Dropped; the next attempt starts in `in_ms`.
    Retrying {
        in_ms: u32,
    },
    /// The server speaks another protocol version: reload the page.
    Incompatible {
        server_version: u32,
    },
}

impl LinkState {
    /// Words for the indicator.
    pub fn label(&self) -> String {
        match self {
            LinkState::Connecting => "connecting…".to_owned(),
            LinkState::Connected => "connected".to_owned(),
            LinkState::Retrying { in_ms } => format!("disconnected, retrying in {}s", in_ms.div_ceil(1000)),
            LinkState::Incompatible { server_version } => {
                format!("server speaks protocol {server_version}, this page {PROTOCOL_VERSION}: reload")
            }
        }
    }

    /// Stable name for styling and tests (`data-state`).
    pub fn key(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Retrying { .. } => "retrying",
            LinkState::Incompatible { .. } => "incompatible",
        }
    }
}

/// Every job the server has told of since the page loaded (its late-joiner state first): what
/// the jobs panel lists and the document view finds its running synthesis in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobBoard {
    pub synth: std::collections::BTreeMap<i64, (SynthRun, Option<f64>)>,
    pub runs: std::collections::BTreeMap<i64, Run>,
    pub evals: std::collections::BTreeMap<i64, Eval>,
    /// Adapt jobs; each stage's own job is among the others.
    pub adapt: std::collections::BTreeMap<i64, attune_shared::AdaptJob>,
}

/// Queued or running.
pub fn unfinished(status: JobStatus) -> bool {
    matches!(status, JobStatus::Queued | JobStatus::Running)
}

impl JobBoard {
    /// Takes what `message` says about a job; false when it says nothing about one.
    pub fn apply(&mut self, message: &ServerMessage) -> bool {
        match message {
            ServerMessage::SynthProgress { run, eta_seconds } => {
                self.synth.insert(run.id, (run.clone(), *eta_seconds));
            }
            ServerMessage::RunState { run } => {
                self.runs.insert(run.id, run.clone());
            }
            ServerMessage::TrainStep { run_id, point } => {
                let Some(run) = self.runs.get_mut(run_id) else { return false };
                run.step = point.step;
                run.total_steps = point.total_steps;
                run.last = Some(*point);
            }
            ServerMessage::EvalState { eval } => {
                self.evals.insert(eval.id, (**eval).clone());
            }
            ServerMessage::AdaptState { adapt } => {
                self.adapt.insert(adapt.id, (**adapt).clone());
            }
            _ => return false,
        }
        true
    }

    /// Jobs queued or running.
    pub fn active(&self) -> usize {
        self.synth.values().filter(|(r, _)| unfinished(r.status)).count()
            + self.runs.values().filter(|r| unfinished(r.status)).count()
            + self.evals.values().filter(|e| unfinished(e.status)).count()
    }

    /// The newest unfinished synthesis run for `document_id`.
    pub fn synth_for_document(&self, document_id: i64) -> Option<(SynthRun, Option<f64>)> {
        self.synth
            .values()
            .rev()
            .find(|(run, _)| run.document_id == Some(document_id) && unfinished(run.status))
            .cloned()
    }
}

/// Handle to the live link, shared through Leptos context.
#[derive(Clone, Copy)]
pub struct Link {
    /// Current state of the connection.
    pub state: ReadSignal<LinkState>,
    /// Counts successful connections; effects that refresh on reconnect read it.
    pub connections: ReadSignal<u32>,
    /// The latest synthesis progress the server sent (any run), with its ETA in seconds.
    pub synth: ReadSignal<Option<(SynthRun, Option<f64>)>>,
    /// Job messages (run states, steps, checkpoints, evaluations, logs, index progress) not yet
    /// taken by a page; see [`take`]. Keeps the latest [`INBOX_LIMIT`].
    pub jobs: RwSignal<VecDeque<ServerMessage>>,
    /// Chat messages (passages, tokens, done, errors) not yet taken by the chat page.
    pub chat: RwSignal<VecDeque<ServerMessage>>,
    /// Every job heard of, for the jobs panel.
    pub board: RwSignal<JobBoard>,
    /// Sends client messages (chat questions) on the link.
    pub sender: Sender,
}

/// Messages an inbox keeps for a page that is not looking.
pub const INBOX_LIMIT: usize = 2000;

/// Takes every message waiting in `inbox` (and subscribes the calling effect to new ones). Pages
/// drain inboxes instead of reading a "latest message" signal, so a burst of tokens loses none.
pub fn take(inbox: RwSignal<VecDeque<ServerMessage>>) -> Vec<ServerMessage> {
    inbox.track();
    let mut taken = Vec::new();
    inbox.update_untracked(|queue| taken.extend(queue.drain(..)));
    taken
}

fn push(inbox: RwSignal<VecDeque<ServerMessage>>, message: ServerMessage) {
    inbox.update(|queue| {
        queue.push_back(message);
        while queue.len() > INBOX_LIMIT {
            queue.pop_front();
        }
    });
}

/// The way to send on the live link (none for a link built by a test).
#[derive(Clone, Copy)]
pub struct Sender(StoredValue<Weak<Inner>, LocalStorage>);

impl Sender {
    /// A sender with no link behind it: every send fails.
    pub fn none() -> Sender {
        Sender(StoredValue::new_local(Weak::new()))
    }
}

impl Link {
    /// Sends `message` on the live link; false when it is not connected.
    pub fn send(&self, message: &ClientMessage) -> bool {
        let Some(inner) = self.sender.0.with_value(Weak::upgrade) else { return false };
        let current = inner.current.borrow();
        let Some(connection) = current.as_ref() else { return false };
        if connection.socket.ready_state() != WebSocket::OPEN {
            return false;
        }
        let text = serde_json::to_string(message).expect("client messages serialise");
        connection.socket.send_with_str(&text).is_ok()
    }
}

struct Inner {
    url: String,
    set_state: WriteSignal<LinkState>,
    set_connections: WriteSignal<u32>,
    set_synth: WriteSignal<Option<(SynthRun, Option<f64>)>>,
    jobs: RwSignal<VecDeque<ServerMessage>>,
    chat: RwSignal<VecDeque<ServerMessage>>,
    board: RwSignal<JobBoard>,
    backoff: RefCell<Backoff>,
    last_heard_ms: Cell<f64>,
    nonce: Cell<u64>,
    current: RefCell<Option<Connection>>,
    retry: RefCell<Option<Timeout>>,
}

/// One WebSocket and the callbacks that must live as long as it does.
struct Connection {
    socket: WebSocket,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
    _heartbeat: Interval,
}

/// Opens the link (for the lifetime of the page) and returns its signals.
pub fn start(token: Option<&str>) -> Link {
    let (state, set_state) = signal(LinkState::Connecting);
    let (connections, set_connections) = signal(0u32);
    let (synth, set_synth) = signal(None::<(SynthRun, Option<f64>)>);
    let jobs = RwSignal::new(VecDeque::new());
    let chat = RwSignal::new(VecDeque::new());
    let board = RwSignal::new(JobBoard::default());
    let location = web_sys::window().expect("a browser window").location();
    let url =
        ws_url(&location.protocol().unwrap_or_else(|_| "http:".into()), &location.host().unwrap_or_default(), token);
    let inner = Rc::new(Inner {
        url,
        set_state,
        set_connections,
        set_synth,
        jobs,
        chat,
        board,
        backoff: RefCell::new(Backoff::default()),
        last_heard_ms: Cell::new(js_sys::Date::now()),
        nonce: Cell::new(0),
        current: RefCell::new(None),
        retry: RefCell::new(None),
    });
    connect(&inner);
    let sender = Sender(StoredValue::new_local(Rc::downgrade(&inner)));
    // The page owns the link until it unloads.
    std::mem::forget(inner);
    Link { state, connections, synth, jobs, chat, board, sender }
}

fn connect(inner: &Rc<Inner>) {
    inner.set_state.set(LinkState::Connecting);
    if let Some(old) = inner.current.borrow_mut().take() {
        old.socket.set_onmessage(None);
        old.socket.set_onclose(None);
        let _ = old.socket.close();
    }
    let socket = match WebSocket::new(&inner.url) {
        Ok(socket) => socket,
        Err(_) => return schedule_retry(inner),
    };
    inner.last_heard_ms.set(js_sys::Date::now());

    let weak = Rc::downgrade(inner);
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let Some(inner) = weak.upgrade() else { return };
        inner.last_heard_ms.set(js_sys::Date::now());
        let Some(text) = event.data().as_string() else { return };
        let message = serde_json::from_str::<ServerMessage>(&text);
        if let Ok(message) = &message {
            inner.board.update(|board| {
                board.apply(message);
            });
        }
        match message {
            Ok(ServerMessage::Hello { protocol_version, .. }) if protocol_version == PROTOCOL_VERSION => {
                inner.backoff.borrow_mut().reset();
                inner.set_state.set(LinkState::Connected);
                inner.set_connections.update(|n| *n += 1);
            }
            Ok(ServerMessage::Hello { protocol_version, .. }) => {
                inner.set_state.set(LinkState::Incompatible { server_version: protocol_version });
            }
            Ok(ServerMessage::SynthProgress { run, eta_seconds }) => inner.set_synth.set(Some((run, eta_seconds))),
            Ok(
                message @ (ServerMessage::ChatPassages { .. }
                | ServerMessage::ChatToken { .. }
                | ServerMessage::ChatDone { .. }
                | ServerMessage::ChatError { .. }),
            ) => push(inner.chat, message),
            Ok(
                message @ (ServerMessage::RunState { .. }
                | ServerMessage::TrainStep { .. }
                | ServerMessage::Checkpoint { .. }
                | ServerMessage::EvalState { .. }
                | ServerMessage::JobLog { .. }
                | ServerMessage::IndexProgress { .. }),
            ) => {
                // Index progress belongs to a chat question too.
                if matches!(message, ServerMessage::IndexProgress { .. }) {
                    push(inner.chat, message.clone());
                }
                push(inner.jobs, message)
            }
            Ok(_) => {}
            Err(e) => leptos::logging::warn!("unreadable message from server: {e}"),
        }
    });
    let weak = Rc::downgrade(inner);
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_event: CloseEvent| {
        if let Some(inner) = weak.upgrade() {
            schedule_retry(&inner);
        }
    });
    socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));

    let weak: Weak<Inner> = Rc::downgrade(inner);
    let heartbeat = Interval::new(HEARTBEAT_MS, move || {
        let Some(inner) = weak.upgrade() else { return };
        let current = inner.current.borrow();
        let Some(connection) = current.as_ref() else { return };
        if js_sys::Date::now() - inner.last_heard_ms.get() > SILENCE_LIMIT_MS {
            // Silent for too long: closing fires `onclose`, which reconnects.
            let _ = connection.socket.close();
            return;
        }
        if connection.socket.ready_state() == WebSocket::OPEN {
            let nonce = inner.nonce.get().wrapping_add(1);
            inner.nonce.set(nonce);
            let ping = serde_json::to_string(&ClientMessage::Ping { nonce }).expect("ping serialises");
            let _ = connection.socket.send_with_str(&ping);
        }
    });
    *inner.current.borrow_mut() =
        Some(Connection { socket, _on_message: on_message, _on_close: on_close, _heartbeat: heartbeat });
}

fn schedule_retry(inner: &Rc<Inner>) {
    if matches!(inner.current.borrow().as_ref(), Some(c) if c.socket.ready_state() == WebSocket::OPEN) {
        return;
    }
    let delay = inner.backoff.borrow_mut().next_delay_ms(js_sys::Math::random());
    inner.set_state.set(LinkState::Retrying { in_ms: delay });
    let weak = Rc::downgrade(inner);
    let timeout = Timeout::new(delay, move || {
        if let Some(inner) = weak.upgrade() {
            connect(&inner);
        }
    });
    *inner.retry.borrow_mut() = Some(timeout);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_keeps_every_job_and_finds_a_documents_synthesis() {
        let synth: SynthRun = serde_json::from_value(serde_json::json!({
            "id": 4, "status": "running", "llm": {"type": "local"}, "model": "m", "questions_per_passage": 3,
            "prompts": {"questions": "q", "answer": "a"}, "passages_total": 20, "document_id": 7,
            "created_at": "t", "updated_at": "t"
        }))
        .unwrap();
        let mut board = JobBoard::default();
        assert!(board.apply(&ServerMessage::SynthProgress { run: synth.clone(), eta_seconds: Some(5.0) }));
        assert_eq!(board.active(), 1);
        assert_eq!(board.synth_for_document(7).map(|(r, _)| r.id), Some(4));
        assert!(board.synth_for_document(8).is_none());
        let mut done = synth;
        done.status = JobStatus::Cancelled;
        board.apply(&ServerMessage::SynthProgress { run: done, eta_seconds: None });
        assert_eq!(board.active(), 0);
        assert!(board.synth_for_document(7).is_none(), "a finished run is not the document's running one");
        assert!(!board.apply(&ServerMessage::Pong { nonce: 1 }));
    }

    #[test]
    fn labels_say_what_is_happening() {
        assert_eq!(LinkState::Connected.label(), "connected");
        assert_eq!(LinkState::Retrying { in_ms: 1500 }.label(), "disconnected, retrying in 2s");
        assert_eq!(LinkState::Retrying { in_ms: 1500 }.key(), "retrying");
        assert!(LinkState::Incompatible { server_version: 9 }.label().contains("protocol 9"));
    }
}
