//! Errors: [`ServeError`] for starting and reloading the service, [`ApiError`] for one request
//! (a status and a one-line JSON body `{"error": "..."}` naming the field at fault).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why the service could not start, or a model could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A model or users file could not be read (lore-io's error names file and tensor).
    #[error(transparent)]
    Io(#[from] lore_io::IoError),
    /// The mathematics refused (e.g. a basis that is not finite).
    #[error(transparent)]
    Core(#[from] lore_core::LoreError),
    /// The user store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The embedder could not be loaded or does not fit the model.
    #[error("embedder: {0}")]
    Embedder(String),
    /// The options do not make a service (e.g. a non-loopback address without a key).
    #[error("{0}")]
    Options(String),
    /// A new model does not fit the served one (different F or embedder).
    #[error("{0}")]
    Incompatible(String),
    /// Binding or serving the socket failed.
    #[error("{what}: {source}")]
    Net {
        /// What was being done (e.g. "binding 127.0.0.1:8080").
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A failed request: the HTTP status and a one-line message naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status (4xx for the client's errors, 5xx for the server's).
    pub status: StatusCode,
    /// The message (one line).
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message` (newlines are folded into one line).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = if message.contains(['\n', '\r']) {
            message
                .split(['\n', '\r'])
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            message
        };
        Self { status, message }
    }
    /// 400 Bad Request: the request cannot be read (syntax, encoding, path).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 422 Unprocessable Entity: well-formed JSON that does not describe a valid request.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// 413 Payload Too Large: the body or the number of items is over the limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 500 Internal Server Error (the message says what failed, never a panic).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// 503 Service Unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    /// The client's mistakes are 4xx (bad id 400, bad pairs 422), a full write queue 429, a
    /// closed store 503, anything else 500.
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as E;
        match e {
            E::InvalidUserId(_) => ApiError::bad_request(e.to_string()),
            E::InvalidInput(m) => ApiError::unprocessable(format!("pairs: {m}")),
            E::Refit(m) => ApiError::unprocessable(format!("pairs: the refit failed: {m}")),
            E::Busy => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "store: the write queue is full; retry later",
            ),
            E::Closed => ApiError::unavailable("store: closed (the server is stopping)"),
            e => ApiError::internal(format!("store: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
