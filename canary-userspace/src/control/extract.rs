//! The control API keeps one error shape for every failure, axum's own
//! included: these extractors wrap axum's `Json`, `Query` and `Path` and
//! turn their rejections (plain text, 415 or 422 in axum) into the API's
//! `{"error": "..."}` with 400; `no_route` (404) and `wrong_method` (405)
//! answer what no route matches. The `root_only` layer still runs before
//! any of them: a non-root caller gets 403 before its body is read.

use super::server::Fail;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use serde::de::DeserializeOwned;

/// A JSON request body (`Content-Type: application/json`); the body types
/// refuse unknown fields (`#[serde(deny_unknown_fields)]` in `api.rs`).
pub(super) struct Body<T>(pub T);

/// A query string.
pub(super) struct QueryOf<T>(pub T);

/// The path's parameters.
pub(super) struct PathOf<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Fail;

    async fn from_request(req: Request, state: &S) -> Result<Self, Fail> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(body)) => Ok(Body(body)),
            Err(r) => Err(body_rejection(r)),
        }
    }
}

impl<T, S> FromRequestParts<S> for QueryOf<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Fail> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(QueryOf(q)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

impl<T, S> FromRequestParts<S> for PathOf<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Fail;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Fail> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(PathOf(p)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

/// What went wrong, without axum's preamble: the error's source (serde's
/// message, with the field and position) when there is one.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    e.source().map_or_else(|| e.to_string(), |s| s.to_string())
}

/// One line, at most 300 characters (an error may quote the request).
fn one_line(text: String) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    if flat.chars().count() <= 300 {
        return flat;
    }
    let mut short: String = flat.chars().take(297).collect();
    short.push_str("...");
    short
}

/// A client's mistake is 400 (axum says 415 or 422 for some); a body over
/// the limit stays 413, axum's own failures stay 5xx.
fn client_status(status: StatusCode) -> StatusCode {
    if status.is_client_error() && status != StatusCode::PAYLOAD_TOO_LARGE {
        StatusCode::BAD_REQUEST
    } else {
        status
    }
}

fn body_rejection(r: JsonRejection) -> Fail {
    let status = client_status(r.status());
    let message = match &r {
        JsonRejection::JsonDataError(e) => format!("bad request body: {}", cause(e)),
        JsonRejection::JsonSyntaxError(e) => {
            format!("the request body is not valid JSON: {}", cause(e))
        }
        JsonRejection::MissingJsonContentType(_) => {
            "the request body must be JSON, sent with Content-Type: application/json".to_string()
        }
        other => format!("reading the request body: {}", other.body_text()),
    };
    Fail(status, one_line(message))
}

fn query_rejection(r: QueryRejection) -> Fail {
    let status = client_status(r.status());
    let message = match &r {
        QueryRejection::FailedToDeserializeQueryString(e) => {
            format!("bad query string: {}", cause(e))
        }
        other => format!("bad query string: {}", other.body_text()),
    };
    Fail(status, one_line(message))
}

fn path_rejection(r: PathRejection) -> Fail {
    let status = client_status(r.status());
    let message = match &r {
        PathRejection::FailedToDeserializePathParams(e) => {
            format!("bad path: {}", e.body_text())
        }
        other => other.body_text(),
    };
    Fail(status, one_line(message))
}

/// The router's fallback: no route has this path.
pub(super) async fn no_route(method: Method, uri: Uri) -> Fail {
    Fail(
        StatusCode::NOT_FOUND,
        one_line(format!("no such route: {method} {}", uri.path())),
    )
}

/// A route called with a method it does not take (axum adds `Allow`).
pub(super) async fn wrong_method(method: Method, uri: Uri) -> Fail {
    Fail(
        StatusCode::METHOD_NOT_ALLOWED,
        one_line(format!(
            "{method} is not allowed on {} (the Allow header lists what is)",
            uri.path()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_to_one_short_line() {
        assert_eq!(one_line("a\nb\r\nc".into()), "a b  c");
        let long = one_line("x".repeat(1000));
        assert_eq!(long.chars().count(), 300);
        assert!(long.ends_with("..."));
    }

    #[test]
    fn client_mistakes_are_400() {
        for s in [
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::BAD_REQUEST,
        ] {
            assert_eq!(client_status(s), StatusCode::BAD_REQUEST);
        }
        assert_eq!(
            client_status(StatusCode::PAYLOAD_TOO_LARGE),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            client_status(StatusCode::INTERNAL_SERVER_ERROR),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
