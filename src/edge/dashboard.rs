//! Static assets served from the Worker with a strict CSP: the usage page, the operator console
//! (which shares the usage page's drawing, `usage.js`, and its style) and the `OpenAPI` document.
//!
//! The pages hold no data: the usage page calls `/_quota/v1/usage` with the org key, or
//! `/_quota/admin/orgs/{org}/usage` with an admin token; the console calls the admin API with
//! an admin token. This file only serves the bytes.

use worker::{Headers, Response};

use super::error::EdgeError;

const HTML: &str = include_str!("dashboard/index.html");
const JS: &str = include_str!("dashboard/app.js");
const CSS: &str = include_str!("dashboard/style.css");
const USAGE_JS: &str = include_str!("dashboard/usage.js");
const CONSOLE_HTML: &str = include_str!("dashboard/console.html");
const CONSOLE_JS: &str = include_str!("dashboard/console.js");
/// The `OpenAPI` 3.1 document of the HTTP contract, written by `scripts/openapi.py`.
const OPENAPI: &str = include_str!("openapi.json");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, or `None` for any other path.
pub fn serve(path: &str) -> Option<Result<Response, EdgeError>> {
    let (body, content_type) = match path {
        "/_quota/dashboard" | "/_quota/dashboard/" => (HTML, "text/html; charset=utf-8"),
        "/_quota/dashboard/app.js" => (JS, "text/javascript; charset=utf-8"),
        "/_quota/dashboard/style.css" => (CSS, "text/css; charset=utf-8"),
        "/_quota/dashboard/usage.js" => (USAGE_JS, "text/javascript; charset=utf-8"),
        "/_quota/admin" => (CONSOLE_HTML, "text/html; charset=utf-8"),
        "/_quota/dashboard/console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "/_quota/openapi.json" => (OPENAPI, "application/json"),
        _ => return None,
    };
    Some(respond(body, content_type).map_err(EdgeError::platform("dashboard response")))
}

fn respond(body: &str, content_type: &str) -> worker::Result<Response> {
    let h = Headers::new();
    h.set("Content-Type", content_type)?;
    h.set("Content-Security-Policy", CSP)?;
    h.set("X-Content-Type-Options", "nosniff")?;
    h.set("Referrer-Policy", "no-referrer")?;
    h.set("Cache-Control", "no-cache")?;
    Ok(Response::ok(body)?.with_headers(h))
}
