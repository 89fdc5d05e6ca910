//! The `/ws` WebSocket: a `hello` carrying the protocol version, then client requests
//! answered in order until either side closes or the server shuts down.

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;

use attune_shared::{ClientMessage, PROTOCOL_VERSION, ServerMessage};

use super::AppState;
use super::error::AppError;

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
    let mut events = state.events().subscribe();
    loop {
        tokio::select! {
            event = events.recv() => {
                match event {
                    Ok(message) => {
                        if send(&mut socket, &message).await.is_err() {
                            break;
                        }
                    }
                    // A slow client missed some progress; later events carry the whole state.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
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
                    Some(Ok(Message::Text(text))) => answer(&text),
                    Some(Ok(Message::Binary(_))) => ServerMessage::Error {
                        code: "binary_not_supported".into(),
                        message: "messages are JSON text frames".into(),
                    },
                    // Ping/pong frames are answered by the WebSocket layer itself.
                    Some(Ok(_)) => continue,
                };
                if send(&mut socket, &reply).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn answer(text: &str) -> ServerMessage {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Ping { nonce }) => ServerMessage::Pong { nonce },
        Err(e) => ServerMessage::Error { code: "bad_message".into(), message: format!("cannot read message: {e}") },
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let json = serde_json::to_string(message).expect("server messages always serialise");
    socket.send(Message::Text(json.into())).await
}
