//! Calls to the REST API, with the error body turned into words for people.

use gloo_net::http::Request;
use serde::de::DeserializeOwned;

use attune_shared::ErrorBody;

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
pub async fn get_json<T: DeserializeOwned>(path: &str, token: Option<&str>) -> Result<T, ApiError> {
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
pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
    path: &str,
    body: &B,
    token: Option<&str>,
) -> Result<T, ApiError> {
    send_json(Request::post(path), body, token).await.and_then(|(status, text)| parse(status, &text))
}

/// Sends a JSON body; on success returns the status and the body's text, otherwise the error.
pub async fn send_json<B: serde::Serialize>(
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
pub async fn post_form(path: &str, form: web_sys::FormData, token: Option<&str>) -> Result<(u16, String), ApiError> {
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
pub fn parse<T: DeserializeOwned>(status: u16, text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError {
        status,
        code: "unexpected_response".to_owned(),
        message: format!("cannot read the server's answer: {e}"),
        current: None,
    })
}

/// `DELETE` a resource; the body of a success is ignored.
pub async fn delete(path: &str, token: Option<&str>) -> Result<(), ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_becomes_code_and_message() {
        let e = ApiError::from_response(401, r#"{"error":{"code":"unauthorized","message":"token needed"}}"#);
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (401, "unauthorized", "token needed"));
    }

    #[test]
    fn foreign_body_is_reported_not_swallowed() {
        let e = ApiError::from_response(502, "<html>Bad gateway</html>");
        assert_eq!(e.code, "unexpected_response");
        assert!(e.message.contains("502"));
    }
}
