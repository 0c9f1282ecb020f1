#!/usr/bin/env bash
# `make dev`: applies the D1 migrations to the local ledger, then runs the demo origin (unless
# ORIGIN_URL points elsewhere) and the gateway on 127.0.0.1:8787 under wrangler dev.
# ORIGIN_URL, STRIPE_API_BASE and ALERT_WEBHOOK_URL are passed from the environment to the Worker
# when they are set. PORT moves the gateway, DEMO_ORIGIN_PORT the demo origin, and DEV_STATE the
# local Durable Object and D1 state (wrangler's own default, .wrangler/state).
set -euo pipefail
cd "$(dirname "$0")/.."

state="${DEV_STATE:-.wrangler/state}"
wrangler d1 migrations apply LEDGER --local --persist-to "$state"

vars=()
origin_pid=""
if [ -n "${ORIGIN_URL:-}" ]; then
  echo "gateway → origin ${ORIGIN_URL}"
else
  port="${DEMO_ORIGIN_PORT:-8788}"
  node tests/support/origin.mjs "$port" &
  origin_pid=$!
  ORIGIN_URL="http://127.0.0.1:${port}"
fi
vars+=(--var "ORIGIN_URL:${ORIGIN_URL}")
for name in STRIPE_API_BASE ALERT_WEBHOOK_URL; do
  if [ -n "${!name:-}" ]; then vars+=(--var "${name}:${!name}"); fi
done

cleanup() { [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wrangler dev --ip 127.0.0.1 --port "${PORT:-8787}" --persist-to "$state" "${vars[@]}"
