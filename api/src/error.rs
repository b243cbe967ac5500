//! The API's one error type. Core errors, and the rejections of the JSON, path and query
//! extractors, all become `{"error":{"code","message"}}` with the right status. A 5xx
//! body says nothing internal; its cause is logged once, here.

use axum::{
    Json,
    extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response: `{"error":{"code","message","request_id"}}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// What went wrong, for programs: `invalid_request`, `invalid_json`,
    /// `payload_too_large`, `request_timeout`, `unsupported_media_type`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `illegal_transition`, `idempotency_key_reused`,
    /// `arena_decided`, `conflict`, `unavailable` or `internal`.
    code: &'static str,
    /// What went wrong, for people: names the field and the rule it broke.
    message: String,
    /// The request's `x-request-id`, to quote when asking about a failed request.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    request_id: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Postgres could not be reached (the outage tracker's cue).
    unreachable: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            unreachable: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 503 `unavailable`: retry shortly.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, as the envelope's `message` says it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<turnq_core::Error> for ApiError {
    fn from(e: turnq_core::Error) -> Self {
        use turnq_core::Error as E;
        match &e {
            E::Invalid(_) => Self::bad_request(e.to_string()),
            E::TaskNotFound(_) | E::NotFound(_) => Self::not_found(e.to_string()),
            E::IllegalTransition { .. } => {
                Self::new(StatusCode::CONFLICT, "illegal_transition", e.to_string())
            }
            E::IdempotencyKeyReused { .. } => Self::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                e.to_string(),
            ),
            E::ArenaDecided { .. } => {
                Self::new(StatusCode::CONFLICT, "arena_decided", e.to_string())
            }
            E::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            E::VersionConflict { .. } | E::Fenced { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            _ if e.is_unavailable() => {
                tracing::warn!(error = %turnq_core::error::chain(&e), "Postgres is unavailable");
                ApiError {
                    unreachable: true,
                    ..Self::unavailable("the database is unavailable; retry shortly")
                }
            }
            _ => {
                tracing::error!(error = %turnq_core::error::chain(&e), "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the cause",
                )
            }
        }
    }
}

/// The body stopped arriving for longer than `--body-read-timeout`: 408, whichever
/// extractor was reading it.
fn body_timed_out(r: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return Some(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body stopped arriving for longer than the server waits \
                 (--body-read-timeout); nothing was done",
            ));
        }
        cause = e.source();
    }
    None
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if let Some(timeout) = body_timed_out(&r) {
            return timeout;
        }
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        // 422 (well-formed JSON of the wrong shape) stays 422; everything else keeps
        // the status axum picked, all in the envelope.
        Self::new(status, code, r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if let Some(timeout) = body_timed_out(&r) {
            return timeout;
        }
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "invalid_request",
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = ErrorDetail {
            code: self.code,
            message: self.message,
            request_id: crate::request_id::current().filter(|id| !id.is_empty()),
        };
        let mut response = (self.status, Json(ErrorEnvelope { error })).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.unreachable {
            response.extensions_mut().insert(crate::outage::Unreachable);
        }
        response
    }
}
