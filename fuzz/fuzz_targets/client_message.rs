//! cargo fuzz target: a WebSocket client's text frame through the decoder the server uses
//! (`attune_server::serve::decode_client_message`: serde_json into shared's `ClientMessage`; the
//! fuzz build leaves the server crate, with its database and HTTP stack, out).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(message) = serde_json::from_str::<attune_shared::ClientMessage>(text)
    {
        let _ = serde_json::to_string(&message);
    }
});
