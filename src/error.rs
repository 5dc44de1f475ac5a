//! The one error type of the node. Every failure a client can see maps to a Matrix
//! errcode and HTTP status here, so handlers never build error bodies themselves.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Matrix error: HTTP status, `errcode`, human-readable `error`, and any extra
/// top-level fields the spec asks for (`retry_after_ms`, UIA `flows`, ...).
#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    /// Extra fields merged into the JSON body.
    pub extra: Option<serde_json::Map<String, Value>>,
}

impl Error {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            extra: None,
        }
    }
    pub fn with_extra(mut self, extra: serde_json::Map<String, Value>) -> Self {
        self.extra = Some(extra);
        self
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", m)
    }
    pub fn bad_json(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", m)
    }
    pub fn not_json(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", m)
    }
    pub fn invalid_param(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", m)
    }
    pub fn missing_param(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", m)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }
    pub fn unknown_token() -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("soft_logout".into(), Value::Bool(false));
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown access token",
        )
        .with_extra(extra)
    }
    pub fn user_in_use() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "User ID already taken")
    }
    pub fn invalid_username(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", m)
    }
    pub fn room_in_use(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", m)
    }
    pub fn unrecognized() -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "Unrecognized request")
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed",
        )
    }
    pub fn unsupported_room_version(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION", m)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("retry_after_ms".into(), json!(retry_after_ms));
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with_extra(extra)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", m)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.errcode, self.status.as_u16(), self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        tracing::error!(error = %e, "database error");
        Self::internal("database error")
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::internal("internal error")
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        tracing::error!(error = %e, "serialization error");
        Self::internal("serialization error")
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("errcode".into(), Value::String(self.errcode.into()));
        body.insert("error".into(), Value::String(self.message));
        if let Some(extra) = self.extra {
            body.extend(extra);
        }
        (self.status, axum::Json(Value::Object(body))).into_response()
    }
}
