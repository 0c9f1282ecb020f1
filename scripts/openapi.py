#!/usr/bin/env python3
"""Writes src/edge/openapi.json, the OpenAPI 3.1 document of the gateway's HTTP contract.

Run it after changing an endpoint (`python3 scripts/openapi.py`); `make test` checks that the
committed file is what this script writes, and runs a schemathesis conformance pass against the
running gateway.
"""
import json
import pathlib
import sys

PROBLEM = {"$ref": "#/components/responses/Problem"}
ORG = [{"orgKey": []}, {"orgBearer": []}]
ADMIN = [{"adminToken": []}]


def ok(schema, status="200", ctype="application/json", desc="OK"):
    return {status: {"description": desc, "content": {ctype: {"schema": schema}}}, "default": PROBLEM}


def limited(responses, allowance):
    """An org-key endpoint under the usage API's own per-org limit: a 429 like any other limit."""
    return {**responses, "429": {
        "description": f"The usage API's own per-org limit ({allowance}) is spent: same RateLimit "
                       "fields, Retry-After and problem body as any limit",
        "headers": {"RateLimit": {"schema": {"type": "string"}}, "RateLimit-Policy": {"schema": {"type": "string"}},
                    "Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/problem+json": {"schema": {"type": "object"}}}}}


CALLS = "USAGE_API_CALLS_PER_MINUTE, default 6000 a minute, policy usage_api_calls-minute"
READS = "USAGE_API_READS_PER_MINUTE, default 10 a minute, policy usage_api_reads-minute"


def body(schema, example=None):
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def path_param(name, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", example=None):
    p = {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}
    if example is not None:
        p["example"] = example
    return p


def query(name, schema, required=False, example=None):
    q = {"name": name, "in": "query", "required": required, "schema": schema}
    if example is not None:
        q["example"] = example
    return q


# The examples describe one small deployment: a plan "free" metering `requests` and `rows`, and
# an org "acme" on it (the README's walk-through uses the same names).
ORG_ID = path_param("org_id", example="acme")
PLAN_EXAMPLE = {"name": "Pro", "limits": [{"meter": "requests", "limit": 1000000, "period": "month"},
                                           {"meter": "rows", "limit": None, "period": "day"}]}


INT = {"type": "integer", "minimum": 0, "maximum": 9007199254740991}
INT_POSITIVE = {**INT, "minimum": 1}
RATE_PERIODS = ["second", "minute", "hour"]
DATE = {"type": "string", "format": "date", "example": "2026-11-23"}
ID = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"}
TIME = {"type": "string", "format": "date-time", "example": "2027-01-31T00:00:00Z"}
KEY_ID = path_param("key_id", r"^key_[0-9a-f]{16}$", "key_0123456789abcdef")
NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
EVENT_ID = {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"}
# A reservation id in a path: "." and ".." are path segments a URL resolves away, never an id.
RESERVATION_ID = r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,128}$"
# What one event's metadata may hold (at most 2048 bytes of JSON on the wire); this shape always
# fits: up to 4 keys of at most 32 characters, each a scalar or a string of at most 32.
METADATA = {"type": "object", "maxProperties": 4, "propertyNames": {"maxLength": 32},
            "additionalProperties": {"type": ["string", "number", "boolean", "null"], "maxLength": 32},
            "description": "Free-form: any JSON object of at most 2048 bytes"}

schemas = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "detail": {"type": "string"},
                       "field": {"type": "string", "description": "The field a 400 names (e.g. `limits[1].period`), for a form to show its message beside it"}},
    },
    "Limit": {
        "type": "object",
        "required": ["meter", "limit", "period"],
        "additionalProperties": False,
        "properties": {
            "meter": ID, "limit": {"type": ["integer", "null"], "minimum": 0, "maximum": 9007199254740991},
            "period": {"enum": ["second", "minute", "hour", "day", "month", "lifetime"]},
            "mode": {"enum": ["hard", "soft"]}, "window": {"type": "integer", "minimum": 1, "maximum": 4294967295},
            "on_exceed": {"enum": ["retry", "upgrade"]},
            "counts": {"enum": ["successes", "attempts"],
                       "description": "What the limit counts of proxied requests of known cost: `successes` (2xx; "
                                      "a failed request gives its units back) or `attempts` (every request "
                                      "forwarded to the origin). Rate windows default to attempts, quota periods "
                                      "to successes."},
            "overage_price": {"type": "object", "required": ["per_units", "cents"], "additionalProperties": False,
                              "properties": {"per_units": INT_POSITIVE, "cents": INT}},
        },
        # The rules across fields: a rate window is hard and admits at least 1; a window multiplier
        # is for rate periods; an overage price is for a soft limit with a number.
        "if": {"required": ["period"], "properties": {"period": {"enum": RATE_PERIODS}}},
        "then": {"properties": {"mode": {"const": "hard"}, "limit": {"type": ["integer", "null"], "minimum": 1}}},
        "dependentSchemas": {
            "window": {"properties": {"period": {"enum": RATE_PERIODS}}},
            "overage_price": {"required": ["mode", "limit"], "properties": {"mode": {"const": "soft"}, "limit": {"type": "integer"}}},
        },
    },
    "Plan": {
        "type": "object",
        "description": "A plan as PUT takes it. The body may also carry an `id`; it must equal the plan id in the path.",
        "required": ["limits"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 200}, "on_failure": {"enum": ["closed", "open"]},
            "upgrade_url": {"type": "string", "format": "uri", "pattern": "^https?://"},
            "meters": {"type": "array", "items": {"type": "object", "required": ["id"], "additionalProperties": False, "properties": {
                "id": ID, "unit": {"type": "string"}, "aggregation": {"enum": ["sum", "max", "latest"]},
                "event_name": {"type": "string", "minLength": 1, "maxLength": 100},
                # Also keep one ledger row per usage event, with its metadata (an audit trail).
                "audit": {"type": "boolean"},
                # A composite meter: the sum of these meters (usage is recorded on them).
                "sum_of": {"type": "array", "minItems": 2, "uniqueItems": True, "items": ID}},
                # A composite meter is a sum.
                "dependentSchemas": {"sum_of": {"properties": {"aggregation": {"const": "sum"}}}}}},
            "limits": {"type": "array", "items": ref("Limit"), "maxItems": 64},
            # Adaptive leases, on by default: a key busy on a meter is admitted from pre-debited
            # leases in the Worker isolate. false turns them off; an object tunes them.
            "lease": {"type": ["object", "boolean", "null"], "additionalProperties": False,
                      "description": "Absent, null or true: the default rules; false: every request asks the DO",
                      "properties": {
                "max_units": INT_POSITIVE,
                "ttl_secs": {"type": "integer", "minimum": 1, "maximum": 10},
                "min_requests": {"type": "integer", "minimum": 1, "maximum": 1000,
                                 "description": "Requests of one key on the meter within 2 s before it gets a lease (default 4)"}}},
        },
    },
    "NewKey": {
        "type": "object", "required": ["key_id", "key", "prefix", "org_id", "created_at", "expires_at", "secret_version"],
        "properties": {"key_id": {"type": "string", "pattern": r"^key_[0-9a-f]{16}$"},
                       "key": {"type": "string", "description": "The plaintext, shown in this answer only"},
                       "prefix": {"type": "string"}, "org_id": ID, "created_at": TIME, "expires_at": NULL_TIME,
                       "secret_version": {"type": "integer", "minimum": 1, "maximum": 999},
                       "rolled": {"type": "object", "required": ["key_id", "expires_at"],
                                  "description": "On a roll: the old key and when it stops working"}},
    },
    "KeyInfo": {
        "type": "object", "additionalProperties": False,
        "required": ["key_id", "prefix", "state", "created_at", "last_used", "expires_at", "revoked_at", "secret_version", "replaced_by"],
        "properties": {"key_id": {"type": "string"}, "prefix": {"type": "string"},
                       "state": {"enum": ["active", "rolling", "expired", "revoked"]},
                       "created_at": TIME, "last_used": {"type": ["string", "null"], "format": "date"},
                       "expires_at": NULL_TIME, "revoked_at": NULL_TIME,
                       "secret_version": {"type": "integer", "minimum": 1, "maximum": 999},
                       "replaced_by": {"type": ["string", "null"]}},
    },
    "TokenInfo": {
        "type": "object",
        "required": ["token_id", "name", "scope", "prefix", "state", "created_at", "created_by", "expires_at", "revoked_at"],
        "properties": {"token_id": {"type": "string", "pattern": r"^tok_[0-9a-f]{16}$"}, "name": {"type": "string"},
                       "scope": {"enum": ["read", "write"]}, "prefix": {"type": "string"},
                       "state": {"enum": ["active", "expired", "revoked"]}, "created_at": TIME,
                       "created_by": {"type": "string"}, "expires_at": NULL_TIME, "revoked_at": NULL_TIME,
                       "token": {"type": "string", "description": "The plaintext, in the creating answer only"}},
    },
    "AuditEntry": {
        "type": "object", "additionalProperties": False,
        "required": ["seq", "at", "token_id", "token_name", "action", "target", "summary", "status"],
        "properties": {"seq": INT_POSITIVE, "at": TIME, "token_id": {"type": "string"}, "token_name": {"type": "string"},
                       "action": {"type": "string", "example": "key.roll"}, "target": {"type": "string", "example": "org/acme/key/key_0123456789abcdef"},
                       "summary": {"type": "string"},
                       "status": {"type": ["integer", "null"], "description": "The HTTP status the write ended with; null if unknown"}},
    },
    # A stored plan is the document as accepted plus its row's fields (so no additionalProperties: false).
    "StoredPlan": {
        "type": "object",
        "required": ["id", "name", "limits", "created_at", "updated_at", "version"],
        "properties": {"id": ID, "name": {"type": "string"},
                       # As stored: the document as it was accepted (a null it carried included).
                       "limits": {"type": "array", "items": {"type": "object", "required": ["meter", "limit", "period"]}},
                       "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                       # Raised by every PUT; each org's DO adopts a newer one within PLAN_REFRESH_SECS.
                       "version": {"type": "integer", "minimum": 1},
                       # PUT only: orgs on the plan (none is called), and the adoption bound.
                       "orgs": {"type": "integer", "minimum": 0},
                       "adopted_within_secs": {"type": "integer", "minimum": 1}},
    },
    "LimitStatus": {
        "type": "object",
        "required": ["meter", "policy", "period", "mode", "limit", "used", "remaining", "level", "within_limit", "reset_at"],
        "properties": {
            "meter": {"type": "string"}, "policy": {"type": "string"}, "period": {"type": "string"},
            "mode": {"enum": ["hard", "soft", "unlimited"]}, "limit": {"type": ["integer", "null"]},
            "used": {"type": "integer"}, "remaining": {"type": ["integer", "null"]},
            "percentage": {"type": ["integer", "null"]}, "level": {"enum": ["ok", "warning", "critical", "over"]},
            # used <= limit (always true without a cap): the simplest thing a client checks.
            "within_limit": {"type": "boolean"},
            # A composite meter's usage by part, in the same window.
            "breakdown": {"type": "object", "additionalProperties": {"type": "integer"}},
            "window_start": {"type": "string"}, "reset_at": {"type": ["string", "null"]},
            "reset_in_seconds": {"type": ["integer", "null"]}, "overage": {"type": "integer"},
            "overage_cost_cents": {"type": "integer"}, "unit": {"type": "string"},
        },
    },
    "Decision": {
        "type": "object",
        "required": ["allowed", "status", "meter", "quantity", "level", "limits"],
        "properties": {
            "allowed": {"type": "boolean"}, "status": {"enum": [200, 402, 429]}, "meter": {"type": "string"},
            "quantity": {"type": "integer"}, "level": {"type": "string"}, "retry_after": {"type": ["integer", "null"]},
            "violated_policies": {"type": "array", "items": {"type": "string"}},
            "limits": {"type": "array", "items": ref("LimitStatus")},
            "reservation": {"type": "object", "required": ["id", "quantity", "expires_at"]},
            # On a refusal: the problem a proxied request would have been answered with.
            "problem": {"type": "object", "required": ["type", "title", "status", "detail"]},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["org_id", "plan", "period", "total_overage_cost_cents", "alerts", "meters"],
        "properties": {
            "org_id": {"type": "string"}, "plan": {"type": "string"},
            "period": {"type": "object", "required": ["start", "end"]},
            "total_overage_cost_cents": {"type": "integer"}, "alerts": {"type": "array"},
            "meters": {"type": "array", "items": ref("LimitStatus")},
        },
    },
    "OrgState": {"type": "object", "required": ["org_id", "plan", "limits"]},
    "Org": {
        "type": "object",
        "required": ["id", "plan", "state", "created_at", "updated_at"],
        "properties": {"id": {"type": "string"}, "plan": {"type": "string"}, "state": ref("OrgState")},
    },
}

paths = {
    "/_quota/healthz": {"get": {"summary": "Liveness plus a D1 and a DO round trip", "security": [],
                                "responses": ok({"type": "object", "required": ["status", "checks"]})}},
    "/_quota/openapi.json": {"get": {"summary": "This document", "security": [], "responses": ok({"type": "object"})}},
    "/_quota/admin": {"get": {"summary": "The operator console (HTML); it signs in with an admin token through its form", "security": [],
                              "responses": ok({"type": "string"}, ctype="text/html")}},
    "/_quota/dashboard": {"get": {"summary": "The usage dashboard (HTML)", "security": [],
                                  "responses": ok({"type": "string"}, ctype="text/html")}},
    "/_quota/v1/check": {"post": {
        "summary": "Decide (and optionally reserve) without proxying; a refusal is HTTP 200 with allowed=false",
        "security": ORG,
        "requestBody": body({"type": "object", "required": ["meter"], "additionalProperties": False, "properties": {
            "meter": ID, "quantity": INT, "reserve": {"type": "boolean"},
            "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 86400}},
            # A reservation's ttl only applies to a reservation.
            "dependentSchemas": {"ttl_seconds": {"required": ["reserve"], "properties": {"reserve": {"const": True}}}}},
            {"meter": "requests", "quantity": 1}),
        "responses": limited(ok(ref("Decision")), CALLS)}},
    "/_quota/v1/reservations/{id}/commit": {"post": {
        "operationId": "commitReservation",
        "summary": "Commit a reservation with the quantity used", "security": ORG,
        "parameters": [path_param("id", RESERVATION_ID)],
        "requestBody": body({"type": "object", "additionalProperties": False, "properties": {"quantity": INT}}),
        "responses": ok({"type": "object", "required": ["id", "outcome", "quantity"]})}},
    "/_quota/v1/reservations/{id}/release": {"post": {
        "operationId": "releaseReservation",
        "summary": "Release a reservation", "security": ORG,
        "parameters": [path_param("id", RESERVATION_ID)],
        "responses": ok({"type": "object", "required": ["id", "outcome"]})}},
    "/_quota/v1/events": {"post": {
        "summary": "Record usage events, idempotent by id", "security": ORG,
        "requestBody": body({"type": "object", "required": ["events"], "additionalProperties": False, "properties": {
            "enforce": {"type": "boolean"},
            "events": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
                "type": "object", "required": ["id", "meter", "quantity"], "additionalProperties": False,
                "properties": {"id": EVENT_ID, "meter": ID, "quantity": INT,
                               "timestamp": {"type": "string", "format": "date-time"},
                               "metadata": METADATA}}}}},
            {"events": [{"id": "evt_1", "meter": "rows", "quantity": 250}]}),
        "responses": limited(ok({"type": "object", "required": ["results"], "properties": {"results": {"type": "array", "items": {
            "type": "object", "required": ["id", "status"],
            "properties": {"status": {"enum": ["accepted", "duplicate", "rejected"]}}}}}}), CALLS)}},
    "/_quota/v1/usage": {"get": {"summary": "Live usage overview", "security": ORG, "responses": limited(ok(ref("Usage")), CALLS)}},
    "/_quota/v1/usage/status": {"get": {"summary": "Usage status in short", "security": ORG, "responses": limited(ok({
        "type": "object", "required": ["org_id", "plan", "status", "message"],
        "properties": {"status": {"enum": ["ok", "approaching_limit", "over_limit"]}}}), CALLS)}},
    "/_quota/v1/usage/summary": {"get": {
        "summary": "Per-meter totals from the ledger", "security": ORG,
        "parameters": [query("days", {"type": "integer", "minimum": 1, "maximum": 365})],
        "responses": limited(ok({"type": "object", "required": ["org_id", "period_days", "total_events", "generated_at", "summary_by_type"]}), READS)}},
    "/_quota/v1/usage/history": {"get": {
        "summary": "Daily series of one meter from the ledger", "security": ORG,
        "parameters": [query("meter", ID, True, "requests"), query("from", DATE, True), query("to", DATE, True)],
        "responses": limited(ok({"type": "object", "required": ["org_id", "meter", "days"]}), READS)}},
    "/_quota/admin/plans": {"get": {"summary": "All plans", "security": ADMIN, "responses": ok({
        "type": "object", "required": ["plans"], "properties": {"plans": {"type": "array", "items": ref("StoredPlan")}}})}},
    "/_quota/admin/plans/{plan_id}": {
        "parameters": [path_param("plan_id", example="pro")],
        "get": {"summary": "One plan", "security": ADMIN, "responses": ok(ref("StoredPlan"))},
        "put": {"summary": "Create or replace a plan (its version rises); every org on it adopts it within PLAN_REFRESH_SECS", "security": ADMIN,
                "requestBody": body(ref("Plan"), PLAN_EXAMPLE),
                "responses": {**ok(ref("StoredPlan")), "201": {"description": "Created", "content": {"application/json": {"schema": ref("StoredPlan")}}}}}},
    "/_quota/admin/orgs": {"get": {
        "summary": "Orgs with their plan and worst level (as of each org's last report), nearest to a limit first; paginated and filterable",
        "security": ADMIN,
        "parameters": [query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                       query("offset", {"type": "integer", "minimum": 0, "maximum": 1000000}),
                       query("q", {"type": "string", "maxLength": 64, "description": "Text the org's id or name contains (any case)"}),
                       query("plan", ID),
                       query("sort", {"enum": ["level", "id"]})],
        "responses": ok({"type": "object", "required": ["orgs", "total", "offset", "limit"], "properties": {
            "orgs": {"type": "array", "items": {"type": "object", "required": ["id", "name", "plan", "level"], "properties": {
                "id": ID, "name": {"type": ["string", "null"]}, "plan": ID,
                "level": {"type": ["object", "null"], "description": "The org's limit nearest to its end; null before its first report",
                          "required": ["policy", "meter", "percentage", "until", "reported_at"], "properties": {
                    "policy": {"type": "string"}, "meter": ID, "percentage": {"type": "integer", "minimum": 0},
                    "until": {"type": ["string", "null"], "format": "date-time", "description": "When the window resets (and the level with it)"},
                    "reported_at": {"type": "string", "format": "date-time"}}}}}},
            "total": {"type": "integer", "minimum": 0}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}})}},
    "/_quota/admin/status": {"get": {
        "summary": "Recent threshold alerts and their delivery state, the ledger's backlog and last flush, the Stripe breaker",
        "security": ADMIN,
        "responses": ok({"type": "object", "required": ["generated_at", "you", "ledger", "stripe", "alerts"], "properties": {
            "generated_at": {"type": "string", "format": "date-time"},
            "you": {"type": "object", "description": "The token that asked", "required": ["token_id", "name", "scope"], "properties": {
                "token_id": {"type": "string"}, "name": {"type": "string"}, "scope": {"enum": ["read", "write"]}}},
            "ledger": {"type": "object", "required": ["pending_events", "orgs_pending", "orgs_failing", "last_flush_at"], "properties": {
                "pending_events": {"type": "integer"}, "orgs_pending": {"type": "integer"}, "orgs_failing": {"type": "integer"},
                "last_flush_at": {"type": ["string", "null"], "format": "date-time"}}},
            "stripe": {"type": "object", "required": ["breaker_open", "consecutive_failures", "open_until", "pending_batches", "expired_batches"], "properties": {
                "breaker_open": {"type": "boolean"}, "consecutive_failures": {"type": "integer"},
                "open_until": {"type": ["string", "null"], "format": "date-time"},
                "pending_batches": {"type": "integer"}, "expired_batches": {"type": "integer"}}},
            "alerts": {"type": "array", "items": {"type": "object", "required": ["org_id", "alert_id", "attempts", "outcome", "at"], "properties": {
                "org_id": ID, "alert_id": {"type": "string"}, "attempts": {"type": "integer"},
                "outcome": {"type": "string", "description": "delivered, retry, dead or no_target"},
                "status_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
                "at": {"type": "string", "format": "date-time"}}}}}})}},
    "/_quota/admin/orgs/{org_id}": {
        "get": {"summary": "An org with its live state", "security": ADMIN, "parameters": [ORG_ID], "responses": ok(ref("Org"))},
        # Its example names another org than the others' ("acme"): a PUT moves an org's plan.
        "put": {"summary": "Create or update an org", "security": ADMIN, "parameters": [path_param("org_id", example="beta")],
                "requestBody": body({"type": "object", "required": ["plan"], "additionalProperties": False, "properties": {
                    "plan": ID, "name": {"type": "string", "maxLength": 200}, "billing_anchor": DATE,
                    "stripe_customer_id": {"type": "string", "pattern": "^cus_", "maxLength": 255},
                    "webhook_url": {"type": "string", "format": "uri", "pattern": "^https?://", "maxLength": 2048},
                    "overrides": {"type": "array", "items": ref("Limit")}}},
                    {"plan": "free", "name": "Acme"}),
                "responses": {**ok(ref("Org")), "201": {"description": "Created", "content": {"application/json": {"schema": ref("Org")}}}}}},
    "/_quota/admin/orgs/{org_id}/usage": {"get": {"summary": "The org's usage overview", "security": ADMIN,
                                                  "parameters": [ORG_ID], "responses": ok(ref("Usage"))}},
    "/_quota/admin/orgs/{org_id}/history": {"get": {
        "summary": "Daily series of one meter from the ledger (the usage page's chart in admin mode)", "security": ADMIN,
        "parameters": [ORG_ID, query("meter", ID, True, "requests"), query("from", DATE, True), query("to", DATE, True)],
        "responses": ok({"type": "object", "required": ["org_id", "meter", "days"]})}},
    "/_quota/admin/orgs/{org_id}/keys": {
        "parameters": [ORG_ID],
        "get": {"summary": "The org's keys: state, creation, last-used day, expiry and secret version (never a hash or the plaintext)",
                "security": ADMIN,
                "responses": ok({"type": "object", "required": ["org_id", "keys"],
                                 "properties": {"keys": {"type": "array", "items": ref("KeyInfo")}}})},
        "post": {"summary": "Create a key under the current key secret version; the plaintext is shown once", "security": ADMIN,
                 "requestBody": {"content": {"application/json": {"schema": {
                     "type": "object", "additionalProperties": False,
                     "properties": {"expires_at": {**TIME, "description": "When the key stops working (in the future)"}}}}}},
                 "responses": ok(ref("NewKey"), status="201", desc="Created")}},
    "/_quota/admin/orgs/{org_id}/keys/{key_id}": {"delete": {
        "summary": "Revoke a key, effective on the next request", "security": ADMIN,
        "parameters": [ORG_ID, KEY_ID],
        "responses": ok({"type": "object", "required": ["key_id", "revoked_at"]})}},
    "/_quota/admin/orgs/{org_id}/keys/{key_id}/roll": {"post": {
        "summary": "Roll a key: a new key now, the old one kept for grace_secs (default 86400, at most 30 days; 0 ends it at once)",
        "security": ADMIN, "parameters": [ORG_ID, KEY_ID],
        "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"grace_secs": {"type": "integer", "minimum": 0, "maximum": 2592000},
                           "expires_at": {**TIME, "description": "The new key's expiry"}}}}}},
        "responses": {**ok(ref("NewKey"), status="201", desc="Created"),
                      "409": {"description": "The key is revoked, expired or already rolled", "content": {"application/problem+json": {"schema": ref("Problem")}}}}}},
    "/_quota/admin/tokens": {
        "get": {"summary": "Named admin tokens (never a hash or the plaintext)", "security": ADMIN,
                "responses": ok({"type": "object", "required": ["tokens"], "properties": {"tokens": {"type": "array", "items": ref("TokenInfo")}}})},
        "post": {"summary": "Create a named admin token with scope read or write; the plaintext is shown once (at most 100 active)",
                 "security": ADMIN,
                 "requestBody": body({"type": "object", "required": ["name", "scope"], "additionalProperties": False, "properties": {
                     "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[A-Za-z0-9._@-]([A-Za-z0-9 ._@-]*[A-Za-z0-9._@-])?$"},
                     "scope": {"enum": ["read", "write"]},
                     "expires_at": TIME}}, {"name": "support dashboard", "scope": "read"}),
                 "responses": {**ok({**ref("TokenInfo")}, status="201", desc="Created (with `token`, shown once)"),
                               "409": {"description": "100 tokens are active", "content": {"application/problem+json": {"schema": ref("Problem")}}}}}},
    "/_quota/admin/tokens/{token_id}": {"delete": {
        "summary": "Revoke a named admin token, effective on its next request", "security": ADMIN,
        "parameters": [path_param("token_id", r"^tok_[0-9a-f]{16}$", "tok_0123456789abcdef")],
        "responses": ok({"type": "object", "required": ["token_id", "revoked_at"]})}},
    "/_quota/admin/audit": {"get": {
        "summary": "The admin audit log, newest first: every admin write (and every refused one) by token name; kept RETENTION_DAYS",
        "security": ADMIN,
        "parameters": [query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                       query("before", {"type": "integer", "minimum": 0, "maximum": 9007199254740991})],
        "responses": ok({"type": "object", "required": ["entries", "next_before"], "properties": {
            "entries": {"type": "array", "items": ref("AuditEntry")},
            "next_before": {"type": ["integer", "null"], "description": "Pass as `before` for the next page; null on the last"}}})}},
    "/_quota/admin/orgs/{org_id}/reset": {"post": {
        "summary": "Zero the current windows of a meter (or all)", "security": ADMIN, "parameters": [ORG_ID],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": {"meter": ID}}}}},
        "responses": ok(ref("OrgState"))}},
    "/_quota/admin/orgs/{org_id}/flush": {"post": {
        "summary": "Drain the org's outbox to D1 now", "security": ADMIN, "parameters": [ORG_ID],
        "responses": ok({"type": "object", "required": ["flushed", "pending"]})}},
    "/_quota/admin/orgs/{org_id}/reconcile": {
        "parameters": [ORG_ID],
        "get": {"summary": "Counters against the ledger", "security": ADMIN,
                "responses": ok({"type": "object", "required": ["org_id", "total_drift", "limits"]})},
        "post": {"summary": "Repair counters from the ledger", "security": ADMIN,
                 "responses": ok({"type": "object", "required": ["org_id", "total_drift", "limits"]})}},
    "/_quota/admin/export": {"get": {
        "summary": "Usage per org and meter over a date range", "security": ADMIN,
        "parameters": [query("from", DATE, True), query("to", DATE, True), query("format", {"enum": ["json", "csv"]})],
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": {"type": "object", "required": ["from", "to", "rows"]}},
            "text/csv": {"schema": {"type": "string"}}}}, "default": PROBLEM}}},
    "/_quota/admin/stripe/sync": {"post": {"summary": "Report unreported usage to Stripe now", "security": ADMIN,
                                           "responses": ok({"type": "object"})}},
    "/_quota/admin/metrics": {"get": {"summary": "Prometheus text", "security": ADMIN,
                                      "responses": ok({"type": "string"}, ctype="text/plain")}},
}

doc = {
    "openapi": "3.1.0",
    "info": {"title": "quotagate", "version": "1.0.0",
             "description": (
                 "Edge quota checker: the gateway's own endpoints under /_quota. Every other path is proxied to the origin.\n\n"
                 "**Proxied paths** are normalized once (RFC 3986: unreserved percent-escapes decoded, dot and empty "
                 "segments resolved) and then priced, signed and forwarded as normalized. An encoded `/` or `\\` "
                 "(`%2F`, `%5C`), an encoded control character or a malformed escape is a 400.\n\n"
                 "**Idempotency-Key on a proxied request** (draft-ietf-httpapi-idempotency-key-header) is bound for "
                 "48 hours to the org and to a fingerprint of the request: method, normalized path and query, the "
                 "route's meter and cost, and a SHA-256 of the body (at most 1 MiB; larger is a 413). The same key "
                 "and fingerprint again is a replay: admitted, not counted, answered with `Idempotent-Replayed: true` "
                 "and forwarded with a signed `X-Quota-Replay: true`, so the origin answers from its own record. "
                 "The same key with another fingerprint is a 422 (`idempotency-key-reused`); a key whose first "
                 "request has not been answered yet is a 409 (`idempotency-key-in-flight`). Neither reaches the "
                 "origin. A first request that failed (no 2xx) gives its key up. Event ids of `/_quota/v1/events` "
                 "are a namespace of their own. An org keeps at most 1,000,000 idempotency records: past that the "
                 "oldest settled ones go before their 48 hours (a retry of one is counted as new).\n\n"
                 "**Refusals remembered.** A hard refusal (429 or 402) of a proxied request without an "
                 "Idempotency-Key is answered again from the isolate's memory, with the same problem and headers "
                 "(`t` and `Retry-After` counted down), until its `Retry-After` ends and for at most "
                 "`REFUSAL_MEMORY_MS` (1 s by default): a reset, a plan change or a revoked key reaches a refused "
                 "client within that.\n\n"
                 "**Bounds per org.** Usage that would take a counter or an hour's ledger bucket past 2^53 - 1 is a "
                 "422 (`count-ceiling`); at most 10,000 provisional reservations may be open (the next is a 429, "
                 "`too-many-reservations`, with `Retry-After` until the first expires); a meter nobody declared "
                 "leaves no row.\n\n"
                 "**Keys and secrets.** A key `qg_<org>.v<n>.<random>.<tag>` names the version of the key secret that "
                 "tagged it (`KEY_SECRETS`, current first; keys without a version are version 1, `KEY_SECRET`). A key "
                 "of a version no longer listed, an expired key and a revoked key all get the same 401 as an unknown "
                 "one. During a rotation of `ORIGIN_SECRET` or `WEBHOOK_SECRET` (a comma-separated list, current "
                 "first) requests carry `X-Quota-Signature: v2=…,v2=…` and webhooks `t=…,v1=…,v1=…`: one signature "
                 "per listed secret.")},
    "servers": [{"url": "/"}],
    "paths": paths,
    "components": {
        "schemas": schemas,
        "responses": {"Problem": {"description": "An RFC 9457 problem", "content": {"application/problem+json": {"schema": ref("Problem")}}}},
        "securitySchemes": {
            "orgKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "orgBearer": {"type": "http", "scheme": "bearer", "description": "An org API key as a bearer token"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": (
                "ADMIN_TOKEN (scope write), or a named admin token `qga_…` from POST /_quota/admin/tokens. "
                "A token of scope read may make every GET; any other method is a 403.")},
        },
    },
}

out = pathlib.Path(__file__).resolve().parent.parent / "src/edge/openapi.json"
text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
if "--check" in sys.argv:
    if out.read_text() != text:
        sys.exit(f"{out} is stale: run python3 scripts/openapi.py")
    print(f"{out} is current")
else:
    out.write_text(text)
    print(f"wrote {out}")
