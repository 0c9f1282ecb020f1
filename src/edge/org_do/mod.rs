//! `OrgQuota`: the Durable Object that is the single writer of one org's counters and the
//! source of its usage ledger (bucket batches D1 applies exactly once). It is glue around `crate::org::OrgMachine`.
//!
//! Every message is decode → load what the step needs (`Store::load`) → step the machine →
//! apply its writes (`Store::apply`) → arm the alarm for the machine's wake-up time → reply.
//! Everything from the load to the apply is synchronous, so the output gate and `SQLite`'s
//! implicit transaction make it atomic; the only awaits are the alarm and the D1 I/O in `drain`
//! (the ledger flush, the org's report, and a stale plan's lookup, which comes before a step,
//! never inside one), which never holds decided state across an await. It owns no rule of its own, never
//! answers from memory alone, never calls the origin, and never panics.

mod drain;
mod store;

use std::cell::{Cell, OnceCell, RefCell};

use wasm_bindgen::prelude::wasm_bindgen;
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use super::platform::{decision_log, now, settings};
use crate::org::{AdminOp, OrgError, OrgMachine, OrgMsg, OrgReply, Step};
use crate::policy::Timestamp;
use crate::wire::problem_body;
use store::Store;

/// The DO glue's one error: the machine's refusal, its own storage failing under it, or the
/// ledger (D1) failing the drain.
#[derive(Debug, thiserror::Error)]
enum DoError {
    #[error("{0}")]
    Org(#[from] OrgError),
    #[error("storage: {0}")]
    Storage(#[from] worker::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] super::error::EdgeError),
    #[error("the ledger is busy with a flush or a reconciliation; retry shortly")]
    Busy,
}

impl DoError {
    /// The one mapping from this layer's errors to an answer.
    fn into_reply(self) -> OrgReply {
        match self {
            Self::Org(e) => e.into_reply(),
            Self::Busy => OrgReply::problem(409, problem_body(409, "busy", "Busy", &self.to_string())),
            Self::Storage(e) => {
                worker::console_error!(r#"{{"level":"error","component":"org_do","error":{:?}}}"#, e.to_string());
                let detail = "The org's quota state could not be read or written.";
                OrgReply::problem(500, problem_body(500, "internal", "Internal error", detail))
            }
            // Nothing is lost: what the ledger did not take stays pending in the DO.
            Self::Ledger(e) => {
                let detail = format!("The ledger did not answer; what it did not take stays queued. ({e})");
                OrgReply::problem(503, problem_body(503, "ledger-unavailable", "Ledger unavailable", &detail))
            }
        }
    }
}

type DoResult<T> = std::result::Result<T, DoError>;

/// What this instance has armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// Nothing yet, or the alarm fired: the machine's next wake-up time is armed.
    Not,
    At(Timestamp),
}

#[durable_object]
#[allow(missing_debug_implementations)] // `State` has no Debug
pub struct OrgQuota {
    state: State,
    env: Env,
    store: OnceCell<Store>,
    /// Built from storage on first use, and again after a write failed.
    machine: RefCell<Option<OrgMachine>>,
    armed: Cell<Armed>,
    /// A flush or a reconciliation is awaiting D1: they must not interleave.
    ledger_busy: Cell<bool>,
}

impl DurableObject for OrgQuota {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            store: OnceCell::new(),
            machine: RefCell::new(None),
            armed: Cell::new(Armed::Not),
            ledger_busy: Cell::new(false),
        }
    }

    /// `/ping` for the health check, and the ledger messages, which await D1. Every other
    /// message comes by RPC (`call`).
    async fn fetch(&self, mut req: Request) -> Result<Response> {
        super::platform::set_clock(&self.env);
        let injected = req.path() == "/panic" && settings(&self.env).faults.panic;
        assert!(!injected, "fault injected: panic in the org DO");
        if req.path() == "/ping" {
            let ok = self.store().map_err(worker::Error::RustError)?.ping()?;
            return Response::from_json(&serde_json::json!({"ok": ok, "storage": "sqlite"}));
        }
        // An org message whose plan copy was too old for `call`: the plan is looked up in D1
        // first (and adopted if newer), then the message is stepped as usual.
        if req.path() == "/refresh" {
            let text = req.text().await?;
            drain::refresh_plan(self, None).await;
            let reply = match serde_json::from_str::<OrgMsg>(&text) {
                Ok(msg) => self.handle(msg),
                Err(e) => bad_message(&e),
            };
            self.arm().await?;
            return Response::ok(serde_json::to_string(&reply).unwrap_or_default());
        }
        // Reading the message is the only await before any state is touched.
        let text = req.text().await?;
        let reply = match serde_json::from_str::<OrgMsg>(&text) {
            Ok(OrgMsg::Ledger(op)) => drain::ledger(self, op).await.unwrap_or_else(DoError::into_reply),
            Ok(msg) => self.handle(msg),
            Err(e) => bad_message(&e),
        };
        self.arm().await?;
        respond(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        super::platform::set_clock(&self.env);
        self.armed.set(Armed::Not);
        drain::alarm(self).await;
        self.arm().await?;
        Response::ok("")
    }
}

async fn set_alarm(storage: &worker::Storage, at: Timestamp) -> Result<()> {
    storage.set_alarm(std::time::Duration::from_millis(at.since(now()))).await
}

fn respond(r: &OrgReply) -> Result<Response> {
    let body = serde_json::to_string(r).map_err(|e| worker::Error::RustError(e.to_string()))?;
    Response::ok(body)
}

/// The Worker's hot path: one message in, one answer out, as a JS RPC method
/// (`worker/entry.mjs`'s `OrgQuota.call` hands it here). A step is synchronous, so no
/// Request, Response or body stream is built for it; an alarm it needs is armed without
/// holding the answer (the output gate still waits for that write before the answer leaves).
#[wasm_bindgen]
impl OrgQuota {
    #[wasm_bindgen(js_name = call)]
    pub fn rpc_call(&self, msg: &str) -> String {
        super::platform::set_clock(&self.env);
        let reply = match serde_json::from_str::<OrgMsg>(msg) {
            // The plan copy is older than PLAN_REFRESH_SECS: D1 must be asked first, which a
            // synchronous call cannot; the entry module sends the message to `/refresh`. The
            // admin view asks too, so it shows the plan the org will decide under.
            Ok(OrgMsg::Org { .. } | OrgMsg::Admin(AdminOp::State)) if self.plan_stale() => return REFRESH.to_owned(),
            Ok(msg) => self.handle(msg),
            Err(e) => bad_message(&e),
        };
        // Armed without holding the answer: the output gate still waits for the write.
        if let Some(at) = self.arm_at() {
            let storage = self.state.storage();
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(e) = set_alarm(&storage, at).await {
                    worker::console_error!(
                        r#"{{"level":"error","component":"org_do","msg":"alarm not set","error":{:?}}}"#,
                        e.to_string()
                    );
                }
            });
        }
        serde_json::to_string(&reply).unwrap_or_default()
    }
}

/// What `call` answers when the message must go through `/refresh` (see worker/entry.mjs).
const REFRESH: &str = "refresh";

fn bad_message(e: &dyn std::fmt::Display) -> OrgReply {
    OrgReply::problem(400, problem_body(400, "bad-message", "Bad message", &e.to_string()))
}

impl OrgQuota {
    /// Whether the machine's plan copy is too old to decide with before asking D1.
    fn plan_stale(&self) -> bool {
        self.with_machine(|m, _, now| Ok(m.plan_check(now, None).is_some())).unwrap_or(false)
    }

    /// An org or admin message: one synchronous step.
    fn handle(&self, msg: OrgMsg) -> OrgReply {
        match msg {
            OrgMsg::Org { caller, op } => self.step(|m, store, now| {
                let snap = store.load(&m.needs_org(&caller, &op, now), now)?;
                Ok(m.step_org(&caller, op, snap, now)?)
            }),
            OrgMsg::Admin(op) => self.step(|m, store, now| {
                let snap = store.load(&OrgMachine::needs_admin(&op), now)?;
                Ok(m.step_admin(op, &snap, now)?)
            }),
            // They await D1, which a synchronous RPC step cannot: `fetch` takes them.
            OrgMsg::Ledger(_) => bad_message(&"ledger messages come by fetch"),
        }
    }

    /// The one arming decision: the machine's wake-up time, if it is earlier than what this
    /// instance armed. A new instance arms its own: the machine booted from storage, so that
    /// time is the earliest anything needs, and an alarm an earlier instance left is replaced.
    fn arm_at(&self) -> Option<Timestamp> {
        let want = self.machine.borrow().as_ref().and_then(OrgMachine::wake)?;
        let earlier = match self.armed.get() {
            Armed::At(a) => want < a,
            Armed::Not => true,
        };
        earlier.then(|| {
            self.armed.set(Armed::At(want));
            want
        })
    }

    fn store(&self) -> std::result::Result<&Store, String> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let s = Store::open(&self.state, now(), settings(&self.env).debug_work).map_err(|e| e.to_string())?;
        Ok(self.store.get_or_init(|| s))
    }

    /// Runs `f` on the machine (booted from storage if this instance has none) with the store,
    /// synchronously, and applies what it wrote. A failed write drops the machine so that the
    /// next message rebuilds it from what storage really holds.
    fn with_machine<T>(&self, f: impl FnOnce(&mut OrgMachine, &Store, Timestamp) -> DoResult<T>) -> DoResult<T> {
        let store = self.store().map_err(|e| DoError::Storage(worker::Error::RustError(e)))?;
        let mut slot = self.machine.borrow_mut();
        if slot.is_none() {
            let mut boot = store.boot()?;
            let cfg = settings(&self.env);
            boot.flush_every_ms = cfg.ledger_flush_ms;
            boot.plan_refresh_ms = cfg.plan_refresh_ms;
            boot.report_every_ms = cfg.report_every_ms;
            boot.api_reads_per_minute = cfg.api_reads_per_minute;
            boot.api_calls_per_minute = cfg.api_calls_per_minute;
            *slot = Some(OrgMachine::boot(boot));
        }
        let Some(m) = slot.as_mut() else {
            return Err(DoError::Storage(worker::Error::RustError("no machine".into())));
        };
        let out = f(m, store, now());
        if matches!(out, Err(DoError::Storage(_))) {
            *slot = None;
            store.forget_cache();
        }
        out
    }

    /// One synchronous step: load → step → apply → log, then the answer.
    fn step(&self, f: impl FnOnce(&mut OrgMachine, &Store, Timestamp) -> DoResult<Step>) -> OrgReply {
        let result = self.with_machine(|m, store, now| {
            store.take_work();
            let mut step = f(m, store, now)?;
            // One transaction (`Store::apply`): a failed write undoes the step's earlier ones.
            store.apply_with(&step.writes, now, settings(&self.env).faults.apply_fails)?;
            let (statements, rows) = store.take_work();
            if settings(&self.env).debug_work {
                step.reply
                    .headers
                    .push(("X-Quota-Debug-Work".into(), format!("statements={statements}, rows-written={rows}")));
            }
            Ok(step)
        });
        match result {
            Ok(step) => {
                let wanted = decision_log(&self.env);
                for line in step.log.iter().filter(|l| wanted.wants(l.outcome)) {
                    worker::console_log!("{}", line.render());
                }
                step.reply
            }
            Err(e) => e.into_reply(),
        }
    }

    /// Arms the alarm for the machine's wake-up time when it is earlier than what is armed.
    async fn arm(&self) -> Result<()> {
        match self.arm_at() {
            Some(at) => set_alarm(&self.state.storage(), at).await,
            None => Ok(()),
        }
    }
}
