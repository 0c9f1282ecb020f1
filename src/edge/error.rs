//! The Worker's one error type and its one mapping to an HTTP answer.
//!
//! Every handler returns `Result<Response, EdgeError>`; `EdgeError::into_response` is the only
//! place that chooses a status and a public message, as RFC 9457 problem+json. Internal details
//! go to the log, never to the client.

use serde_json::{json, Value};
use worker::{console_error, Headers, Response, ResponseBuilder};

use super::headers::Rewrite;

use crate::org::OrgReply;
use crate::policy::headers::HeaderList;
use crate::policy::PlanError;
use crate::wire::{problem_body, unauthorized_body, InputError, MAX_IDEMPOTENT_BODY, MAX_JSON_BODY};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Missing, unknown, revoked or forged credentials: all look the same.
    #[error("unauthorized")]
    Unauthorized,
    /// A known admin whose token's scope does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The resource is not in a state the operation applies to (a rolled key rolled again).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("request body is larger than {MAX_JSON_BODY} bytes")]
    TooLarge,
    #[error(
        "a request with an Idempotency-Key is bound to a digest of its body, which may be at most \
         {MAX_IDEMPOTENT_BODY} bytes; send a larger body without the key"
    )]
    IdempotentBodyTooLarge,
    /// The org's Durable Object answered with a refusal or an error of its own: passed through.
    #[error("org DO answered {}", .0.status)]
    Do(Box<OrgReply>),
    #[error("{0} is not set")]
    NotConfigured(&'static str),
    /// A setting this request needs is set and wrong (`config::Settings::check`).
    #[error("{0}")]
    Misconfigured(String),
    /// The platform failed (a binding, D1, a DO call): logged, answered as 503.
    #[error("{context}: {source}")]
    Platform { context: &'static str, source: worker::Error },
    #[error("{0}")]
    Internal(String),
}

impl EdgeError {
    pub fn platform(context: &'static str) -> impl FnOnce(worker::Error) -> Self {
        move |source| Self::Platform { context, source }
    }

    pub fn into_response(self) -> worker::Result<Response> {
        reply_response(&self.into_reply())
    }

    /// The answer for this error, as status, headers and problem body: the HTTP response's and
    /// the service binding's (`rpc`) alike.
    pub fn into_reply(self) -> OrgReply {
        let (status, kind, title, detail) = match &self {
            Self::Unauthorized => return OrgReply::problem(401, unauthorized_body()),
            Self::Forbidden(d) => (403, "forbidden", "Forbidden", d.clone()),
            Self::NotFound(d) => (404, "not-found", "Not found", d.clone()),
            Self::Conflict(d) => (409, "conflict", "Conflict", d.clone()),
            Self::MethodNotAllowed(d) => (405, "method-not-allowed", "Method not allowed", d.clone()),
            Self::BadRequest(d) => (400, "bad-request", "Bad request", d.clone()),
            Self::Input(e) => (400, "invalid-input", "Invalid input", e.to_string()),
            Self::Plan(e) => (400, "invalid-plan", "Invalid plan", e.to_string()),
            Self::TooLarge | Self::IdempotentBodyTooLarge => (413, "too-large", "Payload too large", self.to_string()),
            Self::Do(reply) => return (**reply).clone(),
            // The deployment's own mistake, named exactly: it fails closed and says why.
            Self::NotConfigured(_) | Self::Misconfigured(_) => {
                console_error!("{}", json!({"level": "error", "component": "config", "error": self.to_string()}));
                (503, "misconfigured", "Service misconfigured", self.to_string())
            }
            Self::Platform { .. } | Self::Internal(_) => {
                console_error!("{}", json!({"level": "error", "component": "worker", "error": self.to_string()}));
                (
                    503,
                    "unavailable",
                    "Service unavailable",
                    "A backing service did not answer; retry shortly.".to_owned(),
                )
            }
        };
        let mut body = problem_body(status, kind, title, &detail);
        // The field a 400 names, on its own (an RFC 9457 extension member): a form shows the
        // message next to that field.
        let field = match &self {
            Self::Input(InputError::Field { field, .. }) => Some(field),
            Self::Plan(e) => Some(&e.field),
            _ => None,
        };
        if let (Some(f), Some(obj)) = (field, body.as_object_mut()) {
            obj.insert("field".to_owned(), Value::String(f.clone()));
        }
        let mut reply = OrgReply::problem(status, body);
        if status == 503 {
            reply.headers.push(("Retry-After".into(), "5".to_owned()));
        }
        reply
    }
}

/// A JSON response with the given status and content type, never cached.
pub fn json_response(status: u16, body: &Value, content_type: &str) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", content_type)?;
    headers.set("Cache-Control", "no-store")?;
    Ok(Response::ok(body.to_string())?.with_status(status).with_headers(headers))
}

/// An org Durable Object's answer as the client's response.
pub fn reply_response(reply: &OrgReply) -> worker::Result<Response> {
    answer(reply.status, &reply.headers, reply.body.to_string())
}

/// A decision's answer: its status, its headers and its JSON body text (a problem from 400 on),
/// never cached.
pub fn answer(status: u16, list: &HeaderList, body: String) -> worker::Result<Response> {
    let headers = answer_headers(status, list).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Ok(ResponseBuilder::new().with_status(status).with_headers(headers).fixed(body.into_bytes()))
}

/// An answer's headers, made in one call to JavaScript: a refusal storm is answered by this alone.
fn answer_headers(status: u16, list: &HeaderList) -> Result<Headers, EdgeError> {
    let mut headers = Rewrite::default();
    headers.set("Content-Type", if status >= 400 { "application/problem+json" } else { "application/json" })?;
    headers.set("Cache-Control", "no-store")?;
    for (k, v) in list {
        headers.set(k, v)?;
    }
    if status == 401 {
        headers.set("WWW-Authenticate", "Bearer")?;
    }
    headers.build()
}
