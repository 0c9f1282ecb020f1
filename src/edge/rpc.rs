//! quotagate through a service binding: the Rust side of the `QuotaService` entrypoint
//! (worker/entry.mjs), which another Worker of the account calls with Workers RPC.
//!
//! The binding is the credential (a service binding is private to the account), so the org is
//! named by the caller, not by a key. Each method builds the very operation the HTTP API builds
//! (`org_api::check_op`, `wire`'s parsers), sends it as `Caller::Binding` and answers what the
//! HTTP API would: its status, its headers (`RateLimit` and the rest, for the caller to send on)
//! and its JSON body, bad input and refusals included. It must never decide anything itself.

use serde_json::{json, Value};
use wasm_bindgen::prelude::wasm_bindgen;
use worker::Env;

use super::error::EdgeError;
use super::org_api::{check_op, reservation_id};
use super::platform::{call_do, now, settings};
use crate::org::{Caller, OrgMsg, OrgOp, OrgReply, SettleAction};
use crate::policy::OrgId;
use crate::wire::{parse_commit, parse_json, CheckRequest, EventsRequest, InputError};

/// One RPC call: `method` on `org`, with the reservation `id` for commit and release, and the
/// JSON `args` the HTTP API's body would hold. The answer is JSON text:
/// `{"status", "headers": [[name, value], …], "body"}`; it never throws.
#[wasm_bindgen]
pub async fn rpc(env: Env, method: String, org: String, id: String, args: String) -> String {
    super::platform::set_clock(&env);
    let reply = call(&env, &method, &org, &id, &args).await.unwrap_or_else(EdgeError::into_reply);
    // The reply's own parts: the headers and the JSON body the HTTP API would send, never read
    // back from a response.
    json!({"status": reply.status, "headers": reply.headers, "body": reply.body}).to_string()
}

async fn call(env: &Env, method: &str, org: &str, id: &str, args: &str) -> Result<OrgReply, EdgeError> {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let org = OrgId::parse(org)
        .map_err(|e| EdgeError::Input(InputError::Field { field: "org".into(), reason: format!("'{org}' {e}") }))?;
    let body = if args.trim().is_empty() { json!({}) } else { parse_json(args.as_bytes())? };
    let op = match method {
        "check" => check_op(CheckRequest::parse(&body)?)?,
        "reserve" => {
            let mut req = CheckRequest::parse(&body)?;
            req.reserve = true;
            check_op(req)?
        }
        "commit" => OrgOp::Settle {
            id: reservation_id(id, "reservation id")?,
            action: SettleAction::Commit { quantity: parse_commit(&body)? },
        },
        // Like the HTTP API's release, which reads no body.
        "release" => OrgOp::Settle { id: reservation_id(id, "reservation id")?, action: SettleAction::Release },
        "record" => {
            let req = EventsRequest::parse(&body, now())?;
            OrgOp::Events { events: req.events, enforce: req.enforce }
        }
        "usage" => {
            let short = body.get("short").and_then(Value::as_bool).unwrap_or(false);
            OrgOp::Usage { short }
        }
        other => return Err(EdgeError::NotFound(format!("no RPC method '{other}'"))),
    };
    call_do(env, &org, &OrgMsg::Org { caller: Caller::Binding, op }).await
}
