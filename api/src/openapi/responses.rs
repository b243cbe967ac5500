//! The shared error responses of the API document: one per status, each the error
//! envelope (`components/responses`). Handlers name them in their annotations; kept
//! apart from the document itself, which names the handlers.

use utoipa::{
    ToResponse,
    openapi::{
        self, ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type,
    },
};

/// A shared error response with the envelope as its body.
fn error_response(description: &str) -> openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build(),
        )
        .build()
}

fn with_header(response: openapi::Response, name: &str, description: &str) -> openapi::Response {
    let mut response = response;
    response.headers.insert(
        name.to_owned(),
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(description))
            .build(),
    );
    response
}

/// Declares one shared error response per status: its name in `components/responses`
/// and what it means.
macro_rules! error_responses {
    ($($name:ident => $description:literal),* $(,)?) => {$(
        pub(crate) struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<openapi::Response>) {
                (stringify!($name), RefOr::T(decorate(stringify!($name), error_response($description))))
            }
        }
    )*};
}

/// The headers some error statuses carry besides the envelope.
fn decorate(name: &str, response: openapi::Response) -> openapi::Response {
    match name {
        "Unauthorized" => with_header(response, "WWW-Authenticate", "`Bearer`."),
        "Unavailable" => with_header(response, "Retry-After", "Seconds to wait: `1`."),
        _ => response,
    }
}

error_responses! {
    BadRequest => "The request breaks a rule: a bad path, query or body value; the message names the field and the limit.",
    Unauthorized => "No bearer token, or an unknown or revoked one.",
    Forbidden => "The token lacks the scope this operation needs.",
    NotFound => "No such resource.",
    Conflict => "The resource's state does not allow this now (e.g. cancelling a completed task), or another writer moved first.",
    PayloadTooLarge => "The body is larger than this route accepts.",
    UnsupportedMediaType => "The body is not sent as `application/json`.",
    Unprocessable => "The body is JSON of the wrong shape (a wrong type, a missing field).",
    Unavailable => "Postgres is unavailable, or the process is still starting or stopping; retry shortly.",
    Internal => "An unexpected failure; the server log has the cause under the request id.",
}
