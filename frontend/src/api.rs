//! The REST API as typed calls ([`Api`], held in a Leptos context: every route's URL is built here
//! and nowhere else), with the error body turned into words for people.

use gloo_net::http::Request;
use serde::de::DeserializeOwned;

use attune_shared::{
    API_PREFIX, BulkAction, BulkResult, Document, ErrorBody, Eval, Health, ImportResult, ModelPair, NewEval, NewRun,
    NewTriple, Passage, Preset, Run, StepPoint, SynthRequest, SynthRun, TestSetInfo, Triple, TriplePage, TripleUpdate,
};

use crate::endpoints::bearer;

/// Why an API call failed, ready to show.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status, or 0 when the server could not be reached.
    pub status: u16,
    pub code: String,
    pub message: String,
    /// With a `version_conflict`: the triple as the server has it now.
    pub current: Option<Box<attune_shared::Triple>>,
}

impl ApiError {
    /// Builds the error from a response status and body (the JSON error format, or anything).
    pub fn from_response(status: u16, body: &str) -> ApiError {
        match serde_json::from_str::<ErrorBody>(body) {
            Ok(ErrorBody { error, current }) => ApiError { status, code: error.code, message: error.message, current },
            Err(_) => ApiError {
                status,
                code: "unexpected_response".to_owned(),
                message: format!("the server answered {status} with a body that is not an Attune error"),
                current: None,
            },
        }
    }

    pub fn unreachable(detail: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: 0,
            code: "unreachable".to_owned(),
            message: format!("cannot reach the server: {detail}"),
            current: None,
        }
    }
}

/// `GET` a JSON resource from the API.
async fn get_json<T: DeserializeOwned>(path: &str, token: Option<&str>) -> Result<T, ApiError> {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("Authorization", &bearer(token));
    }
    let response = request.send().await.map_err(ApiError::unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(ApiError::unreachable)?;
    if response.ok() { parse(status, &body) } else { Err(ApiError::from_response(status, &body)) }
}

/// `POST` a JSON body and read a JSON answer.
async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
    path: &str,
    body: &B,
    token: Option<&str>,
) -> Result<T, ApiError> {
    send_json(Request::post(path), body, token).await.and_then(|(status, text)| parse(status, &text))
}

/// Sends a JSON body; on success returns the status and the body's text, otherwise the error.
async fn send_json<B: serde::Serialize>(
    mut request: gloo_net::http::RequestBuilder,
    body: &B,
    token: Option<&str>,
) -> Result<(u16, String), ApiError> {
    if let Some(token) = token {
        request = request.header("Authorization", &bearer(token));
    }
    let request = request.json(body).map_err(|e| ApiError::unreachable(format!("cannot encode the request: {e}")))?;
    answer(request).await
}

/// `POST`s a multipart form (a file upload); on success returns the status and the body's text.
async fn post_form(path: &str, form: web_sys::FormData, token: Option<&str>) -> Result<(u16, String), ApiError> {
    let mut request = Request::post(path);
    if let Some(token) = token {
        request = request.header("Authorization", &bearer(token));
    }
    answer(request.body(form).map_err(ApiError::unreachable)?).await
}

/// Sends a built request: the status and body's text of a success, the error otherwise.
async fn answer(request: gloo_net::http::Request) -> Result<(u16, String), ApiError> {
    let response = request.send().await.map_err(ApiError::unreachable)?;
    let status = response.status();
    let text = response.text().await.map_err(ApiError::unreachable)?;
    if !response.ok() {
        return Err(ApiError::from_response(status, &text));
    }
    Ok((status, text))
}

/// A JSON answer read into `T`.
fn parse<T: DeserializeOwned>(status: u16, text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError {
        status,
        code: "unexpected_response".to_owned(),
        message: format!("cannot read the server's answer: {e}"),
        current: None,
    })
}

/// `DELETE` a resource; the body of a success is ignored.
async fn delete(path: &str, token: Option<&str>) -> Result<(), ApiError> {
    let mut request = Request::delete(path);
    if let Some(token) = token {
        request = request.header("Authorization", &bearer(token));
    }
    let response = request.send().await.map_err(ApiError::unreachable)?;
    if response.ok() {
        return Ok(());
    }
    let status = response.status();
    let body = response.text().await.map_err(ApiError::unreachable)?;
    Err(ApiError::from_response(status, &body))
}

/// The API of the server this page came from, with the page's bearer token. `Copy`, so closures
/// and tasks take it without clones; `provide_context(Api::new(..))` once in the shell, then
/// [`Api::from_context`] anywhere (a component mounted alone reads the token from the page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Api {
    /// Leaked once per page load: the token lives as long as the page.
    token: Option<&'static str>,
}

/// What a run can be asked to do (`POST /runs/{id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    Cancel,
    Resume,
}

impl RunAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RunAction::Cancel => "cancel",
            RunAction::Resume => "resume",
        }
    }
}

/// What becomes of a deleted document's triples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepTriples {
    Keep,
    Delete,
}

fn url(path: &str) -> String {
    format!("{API_PREFIX}{path}")
}

/// Hands `bytes` to the browser as a downloaded file named `name`.
fn save_file(bytes: &[u8], name: &str, mime: &str) -> Result<(), wasm_bindgen::JsValue> {
    use wasm_bindgen::JsCast;
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options)?;
    let href = web_sys::Url::create_object_url_with_blob(&blob)?;
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let anchor: web_sys::HtmlAnchorElement = document.create_element("a")?.dyn_into()?;
    anchor.set_href(&href);
    anchor.set_download(name);
    anchor.click();
    // The download has started reading the Blob by then; free it.
    gloo_timers::callback::Timeout::new(30_000, move || {
        let _ = web_sys::Url::revoke_object_url(&href);
    })
    .forget();
    Ok(())
}

/// The file name of `attachment; filename="NAME"`.
pub fn attachment_name(disposition: &str) -> Option<String> {
    let name = disposition.split_once("filename=")?.1.trim().trim_matches('"');
    (!name.is_empty()).then(|| name.to_owned())
}

fn form_error(e: wasm_bindgen::JsValue) -> ApiError {
    ApiError::unreachable(format!("{e:?}"))
}

/// A multipart form holding one file under `field`.
fn file_form(field: &str, file: &web_sys::File) -> Result<web_sys::FormData, ApiError> {
    let form = web_sys::FormData::new().map_err(form_error)?;
    form.append_with_blob_and_filename(field, file, &file.name()).map_err(form_error)?;
    Ok(form)
}

impl Api {
    pub fn new(token: Option<String>) -> Api {
        Api { token: token.map(|t| &*Box::leak(t.into_boxed_str())) }
    }

    /// The shell's client, or one for this page's token.
    pub fn from_context() -> Api {
        leptos::prelude::use_context::<Api>().unwrap_or_else(|| Api::new(crate::token::from_page()))
    }

    pub fn token(self) -> Option<&'static str> {
        self.token
    }

    async fn get<T: DeserializeOwned>(self, path: &str) -> Result<T, ApiError> {
        get_json(&url(path), self.token).await
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(self, path: &str, body: &B) -> Result<T, ApiError> {
        post_json(&url(path), body, self.token).await
    }

    async fn upload<T: DeserializeOwned>(self, path: &str, form: web_sys::FormData) -> Result<T, ApiError> {
        let (status, text) = post_form(&url(path), form, self.token).await?;
        parse(status, &text)
    }

    pub async fn health(self) -> Result<Health, ApiError> {
        self.get("/health").await
    }

    pub async fn settings(self) -> Result<attune_shared::Settings, ApiError> {
        self.get("/settings").await
    }

    pub async fn save_settings(self, settings: &attune_shared::Settings) -> Result<attune_shared::Settings, ApiError> {
        send_json(Request::put(&url("/settings")), settings, self.token)
            .await
            .and_then(|(status, text)| parse(status, &text))
    }

    pub async fn documents(self) -> Result<Vec<Document>, ApiError> {
        self.get("/documents").await
    }

    pub async fn document(self, id: i64) -> Result<Document, ApiError> {
        self.get(&format!("/documents/{id}")).await
    }

    pub async fn passages(self, document_id: i64) -> Result<Vec<Passage>, ApiError> {
        self.get(&format!("/documents/{document_id}/passages")).await
    }

    /// Where uploads go (sent with XMLHttpRequest for progress, with [`Api::token`]).
    pub fn documents_url(self) -> String {
        url("/documents")
    }

    pub async fn delete_document(self, id: i64, triples: KeepTriples) -> Result<(), ApiError> {
        let triples = match triples {
            KeepTriples::Keep => "keep",
            KeepTriples::Delete => "delete",
        };
        delete(&url(&format!("/documents/{id}?triples={triples}")), self.token).await
    }

    pub async fn start_synthesis(self, request: &SynthRequest) -> Result<SynthRun, ApiError> {
        self.post("/synth/runs", request).await
    }

    pub async fn cancel_synthesis(self, run_id: i64) -> Result<SynthRun, ApiError> {
        self.post(&format!("/synth/runs/{run_id}/cancel"), &serde_json::json!({})).await
    }

    pub async fn synth_runs(self) -> Result<Vec<SynthRun>, ApiError> {
        self.get("/synth/runs").await
    }

    /// Starts an adapt job: questions, approval, training and evaluation in one.
    pub async fn start_adapt(self, request: &attune_shared::AdaptRequest) -> Result<attune_shared::AdaptJob, ApiError> {
        self.post("/adapt", request).await
    }

    pub async fn adapt_jobs(self) -> Result<Vec<attune_shared::AdaptJob>, ApiError> {
        self.get("/adapt").await
    }

    /// `action` is `cancel` or `resume`.
    pub async fn adapt_action(self, id: i64, action: &str) -> Result<attune_shared::AdaptJob, ApiError> {
        self.post(&format!("/adapt/{id}/{action}"), &serde_json::json!({})).await
    }

    pub async fn cancel_eval(self, id: i64) -> Result<Eval, ApiError> {
        self.post(&format!("/evals/{id}/cancel"), &serde_json::json!({})).await
    }

    /// How the approved triples would split for a run with `hyper`.
    pub async fn split(self, hyper: &attune_shared::Hyper) -> Result<attune_shared::SplitPreview, ApiError> {
        self.post("/train/split", hyper).await
    }

    /// A page of triples; `query` is the filter's query string.
    pub async fn triples(self, query: &str) -> Result<TriplePage, ApiError> {
        self.get(&format!("/triples?{query}")).await
    }

    pub async fn add_triple(self, triple: &NewTriple) -> Result<Triple, ApiError> {
        self.post("/triples", triple).await
    }

    pub async fn update_triple(self, id: i64, update: &TripleUpdate) -> Result<Triple, ApiError> {
        let request = Request::patch(&url(&format!("/triples/{id}")));
        let (status, text) = send_json(request, update, self.token).await?;
        parse(status, &text)
    }

    pub async fn bulk(self, action: &BulkAction) -> Result<BulkResult, ApiError> {
        self.post("/triples/bulk", action).await
    }

    pub async fn import_triples(self, file: &web_sys::File) -> Result<ImportResult, ApiError> {
        self.upload("/triples/import", file_form("file", file)?).await
    }

    /// Downloads the triples `query` selects (`format=…&status=…&document_id=…`) under the file name
    /// the server gives. A fetch with the token and a Blob, not a link: a link carries no
    /// `Authorization` header.
    pub async fn export_triples(self, query: &str) -> Result<(), ApiError> {
        let mut request = Request::get(&url(&format!("/triples/export?{query}")));
        if let Some(token) = self.token {
            request = request.header("Authorization", &bearer(token));
        }
        let response = request.send().await.map_err(ApiError::unreachable)?;
        if !response.ok() {
            let status = response.status();
            let text = response.text().await.map_err(ApiError::unreachable)?;
            return Err(ApiError::from_response(status, &text));
        }
        let mime = response.headers().get("content-type").unwrap_or_else(|| "application/octet-stream".into());
        let file =
            response.headers().get("content-disposition").and_then(|d| attachment_name(&d)).unwrap_or("triples".into());
        let bytes = response.binary().await.map_err(ApiError::unreachable)?;
        save_file(&bytes, &file, &mime).map_err(form_error)
    }

    pub async fn presets(self) -> Result<Vec<Preset>, ApiError> {
        self.get("/train/presets").await
    }

    pub async fn runs(self) -> Result<Vec<Run>, ApiError> {
        self.get("/runs").await
    }

    pub async fn start_run(self, request: &NewRun) -> Result<Run, ApiError> {
        self.post("/runs", request).await
    }

    pub async fn run_action(self, id: i64, action: RunAction) -> Result<Run, ApiError> {
        self.post(&format!("/runs/{id}/{}", action.as_str()), &serde_json::json!({})).await
    }

    pub async fn export_run(
        self,
        id: i64,
        request: &attune_shared::NewExport,
    ) -> Result<attune_shared::Export, ApiError> {
        self.post(&format!("/runs/{id}/export"), request).await
    }

    pub async fn run_metrics(self, id: i64) -> Result<Vec<StepPoint>, ApiError> {
        self.get(&format!("/runs/{id}/metrics")).await
    }

    pub async fn evals(self) -> Result<Vec<Eval>, ApiError> {
        self.get("/evals").await
    }

    pub async fn eval(self, id: i64) -> Result<Eval, ApiError> {
        self.get(&format!("/evals/{id}")).await
    }

    pub async fn start_eval(self, request: &NewEval) -> Result<Eval, ApiError> {
        self.post("/evals", request).await
    }

    pub async fn upload_test_set(self, file: &web_sys::File) -> Result<TestSetInfo, ApiError> {
        self.upload("/test-sets", file_form("file", file)?).await
    }

    pub async fn models(self) -> Result<Vec<ModelPair>, ApiError> {
        self.get("/models").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_becomes_code_and_message() {
        let e = ApiError::from_response(401, r#"{"error":{"code":"unauthorized","message":"token needed"}}"#);
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (401, "unauthorized", "token needed"));
    }

    #[test]
    fn the_download_takes_the_servers_file_name() {
        assert_eq!(
            attachment_name("attachment; filename=\"triples.alpaca.jsonl\"").as_deref(),
            Some("triples.alpaca.jsonl")
        );
        assert_eq!(attachment_name("attachment"), None);
    }

    #[test]
    fn foreign_body_is_reported_not_swallowed() {
        let e = ApiError::from_response(502, "<html>Bad gateway</html>");
        assert_eq!(e.code, "unexpected_response");
        assert!(e.message.contains("502"));
    }
}
