//! The `/ws` WebSocket: a `hello` carrying the protocol version, then the state of unfinished jobs,
//! then job events as they happen, client requests (ping, chat) and streamed chat answers, until
//! either side closes or the server shuts down. Chat history lives here, per chat id.

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use attune_shared::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use tokio::sync::mpsc;

use crate::engine::chat::{ChatEvent, Lane, Question};

use super::AppState;
use super::error::AppError;
use super::v1::MAX_QUESTION_CHARS;

pub async fn upgrade(
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let upgrade = upgrade.map_err(|rejection| AppError::BadRequest {
        code: "websocket_upgrade_required",
        message: format!("/ws is a WebSocket endpoint: {}", rejection.body_text()),
    })?;
    Ok(upgrade.on_upgrade(move |socket| session(socket, state)))
}

async fn session(mut socket: WebSocket, state: AppState) {
    let hello = ServerMessage::Hello { protocol_version: PROTOCOL_VERSION, server_version: crate::VERSION.to_owned() };
    if send(&mut socket, &hello).await.is_err() {
        return;
    }
    let shutdown = state.shutdown_token().clone();
    // Subscribe before reading the live state, so nothing falls between the two.
    let mut events = state.events().subscribe();
    let snapshot = state.publisher().live().borrow().joiner_messages();
    for message in &snapshot {
        if send(&mut socket, message).await.is_err() {
            return;
        }
    }
    let (outgoing, mut to_send) = mpsc::unbounded_channel::<Outgoing>();
    let mut chats: HashMap<String, Chat> = HashMap::new();
    loop {
        tokio::select! {
            event = events.recv() => {
                match event {
                    Ok(message) => {
                        if send(&mut socket, &message).await.is_err() {
                            break;
                        }
                    }
                    // A slow client missed events, perhaps a job's end: send it the state again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!("a WebSocket client missed {missed} events; resending the state");
                        let resync = state.publisher().live().borrow().resync_messages();
                        let mut failed = false;
                        for message in &resync {
                            if send(&mut socket, message).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        if failed {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            Some(out) = to_send.recv() => {
                let message = match out {
                    Outgoing::Send(message) => message,
                    Outgoing::Answered { chat_id, generation, question, answer, done } => {
                        if let Some(chat) = chats.get_mut(&chat_id).filter(|c| c.generation == generation) {
                            chat.history.push((question, answer));
                            // Only the latest turns go into a prompt anyway; the rest is memory.
                            let excess = chat.history.len().saturating_sub(MAX_HISTORY_TURNS);
                            chat.history.drain(..excess);
                            chat.answering = None;
                        }
                        done
                    }
                    Outgoing::Failed { chat_id, generation, error } => {
                        if let Some(chat) = chats.get_mut(&chat_id).filter(|c| c.generation == generation) {
                            chat.answering = None;
                        }
                        error
                    }
                };
                if send(&mut socket, &message).await.is_err() {
                    break;
                }
            }
            () = shutdown.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "server shutting down".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break;
            }
            incoming = socket.recv() => {
                let reply = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(text))) => answer(&text, &state, &mut chats, &outgoing).await,
                    Some(Ok(Message::Binary(_))) => Some(ServerMessage::Error {
                        code: "binary_not_supported".into(),
                        message: "messages are JSON text frames".into(),
                    }),
                    // Ping/pong frames are answered by the WebSocket layer itself.
                    Some(Ok(_)) => continue,
                };
                if let Some(reply) = reply
                    && send(&mut socket, &reply).await.is_err()
                {
                    break;
                }
            }
        }
    }
    // Answers still being generated for this connection stop.
    for chat in chats.values() {
        if let Some(stop) = &chat.answering {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// One chat of a connection: its history and the answer being generated.
#[derive(Default)]
struct Chat {
    history: Vec<(String, String)>,
    answering: Option<Arc<AtomicBool>>,
    /// Bumped by `chat_clear`, so an answer finishing after a clear is not added to the new history.
    generation: u64,
}

/// What the relay of an answer hands back to the session.
enum Outgoing {
    Send(ServerMessage),
    Answered { chat_id: String, generation: u64, question: String, answer: String, done: ServerMessage },
    Failed { chat_id: String, generation: u64, error: ServerMessage },
}

/// A client's text frame as the message it is (what the fuzzers drive).
pub fn decode_client_message(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str::<ClientMessage>(text)
}

/// Turns of a chat kept for its next prompts.
const MAX_HISTORY_TURNS: usize = 32;
/// Chats one connection may hold.
const MAX_CHATS: usize = 64;

async fn answer(
    text: &str,
    state: &AppState,
    chats: &mut HashMap<String, Chat>,
    outgoing: &mpsc::UnboundedSender<Outgoing>,
) -> Option<ServerMessage> {
    let message = match decode_client_message(text) {
        Ok(message) => message,
        Err(e) => {
            return Some(ServerMessage::Error {
                code: "bad_message".into(),
                message: format!("cannot read message: {e}"),
            });
        }
    };
    match message {
        ClientMessage::Ping { nonce } => Some(ServerMessage::Pong { nonce }),
        ClientMessage::ChatStop { chat_id } => {
            if let Some(stop) = chats.get(&chat_id).and_then(|c| c.answering.as_ref()) {
                stop.store(true, Ordering::Relaxed);
            }
            None
        }
        ClientMessage::ChatClear { chat_id } => {
            if !chats.contains_key(&chat_id) {
                return None;
            }
            let chat = chats.entry(chat_id).or_default();
            if let Some(stop) = chat.answering.take() {
                stop.store(true, Ordering::Relaxed);
            }
            chat.history.clear();
            chat.generation += 1;
            None
        }
        ClientMessage::ChatAsk { chat_id, request_id, model, question, top_k, options } => {
            let refuse = |code: &str, message: String| {
                Some(ServerMessage::ChatError { chat_id: chat_id.clone(), request_id, code: code.into(), message })
            };
            let question = question.trim().to_owned();
            if question.is_empty() {
                return refuse("empty_question", "ask a question".into());
            }
            if question.chars().count() > MAX_QUESTION_CHARS {
                return refuse("question_too_long", format!("questions are at most {MAX_QUESTION_CHARS} characters"));
            }
            let top_k = top_k.unwrap_or(5);
            if !(1..=20).contains(&top_k) {
                return refuse("bad_top_k", format!("top_k must be between 1 and 20 (got {top_k})"));
            }
            if let Err(message) = options.validate() {
                return refuse("bad_options", message);
            }
            if !chats.contains_key(&chat_id) && chats.len() >= MAX_CHATS {
                // Forget an idle chat to make room; refuse when all are answering.
                let Some(idle) = chats.iter().find(|(_, c)| c.answering.is_none()).map(|(id, _)| id.clone()) else {
                    return refuse("too_many_chats", format!("a connection holds at most {MAX_CHATS} chats"));
                };
                chats.remove(&idle);
            }
            let chat = chats.entry(chat_id.clone()).or_default();
            if chat.answering.is_some() {
                return refuse("busy", "this chat is still answering: stop it or wait".into());
            }
            let pair = match super::runs::resolve_pair(state, &model).await {
                Ok(pair) => pair,
                Err((code, message)) => return refuse(code, message),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (events, mut answers) = mpsc::unbounded_channel();
            let asked = state.chat().ask(
                Lane::WebApp,
                Question {
                    pair,
                    question: question.clone(),
                    options,
                    stop_sequences: Vec::new(),
                    history: chat.history.clone(),
                    top_k: top_k as usize,
                    stop: stop.clone(),
                    events,
                },
            );
            if let Err(e) = asked {
                return refuse("chat_unavailable", e.to_string());
            }
            chat.answering = Some(stop);
            let generation = chat.generation;
            let outgoing = outgoing.clone();
            tokio::spawn(async move {
                while let Some(event) = answers.recv().await {
                    let out = match event {
                        ChatEvent::IndexProgress { done, total } => {
                            Outgoing::Send(ServerMessage::IndexProgress { model: model.clone(), done, total })
                        }
                        ChatEvent::Passages(passages) => Outgoing::Send(ServerMessage::ChatPassages {
                            chat_id: chat_id.clone(),
                            request_id,
                            passages,
                        }),
                        ChatEvent::Token(text) => {
                            Outgoing::Send(ServerMessage::ChatToken { chat_id: chat_id.clone(), request_id, text })
                        }
                        ChatEvent::Done { stopped, answer, stats } => Outgoing::Answered {
                            chat_id: chat_id.clone(),
                            generation,
                            question: question.clone(),
                            answer,
                            done: ServerMessage::ChatDone { chat_id: chat_id.clone(), request_id, stopped, stats },
                        },
                        ChatEvent::Error { code, message } => Outgoing::Failed {
                            chat_id: chat_id.clone(),
                            generation,
                            error: ServerMessage::ChatError {
                                chat_id: chat_id.clone(),
                                request_id,
                                code: code.into(),
                                message,
                            },
                        },
                    };
                    if outgoing.send(out).is_err() {
                        break;
                    }
                }
            });
            None
        }
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let json = serde_json::to_string(message).expect("server messages always serialise");
    socket.send(Message::Text(json.into())).await
}
