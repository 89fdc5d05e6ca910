//! The bearer token for servers started with `--token`: taken once from `?token=` in the
//! page URL, kept in local storage, and removed from the address bar.

const STORAGE_KEY: &str = "attune.token";

/// The token to send, if the user gave one.
pub fn from_page() -> Option<String> {
    let window = web_sys::window()?;
    let storage = window.local_storage().ok().flatten();
    let location = window.location();
    let href = location.href().ok()?;
    let url = web_sys::Url::new(&href).ok()?;
    let params = url.search_params();
    if let Some(token) = params.get(attune_shared::WS_TOKEN_PARAM).filter(|t| !t.is_empty()) {
        if let Some(storage) = &storage {
            let _ = storage.set_item(STORAGE_KEY, &token);
        }
        params.delete(attune_shared::WS_TOKEN_PARAM);
        url.set_search(&params.to_string().as_string().unwrap_or_default());
        if let Ok(history) = window.history() {
            let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url.href()));
        }
        return Some(token);
    }
    storage?.get_item(STORAGE_KEY).ok().flatten()
}
