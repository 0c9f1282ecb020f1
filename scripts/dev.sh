#!/usr/bin/env bash
# `make dev`: the demo origin (unless ORIGIN_URL points elsewhere) and the gateway on
# 127.0.0.1:8787 under wrangler dev. ORIGIN_URL, STRIPE_API_BASE and ALERT_WEBHOOK_URL are passed
# from the environment to the Worker when they are set.
set -euo pipefail
cd "$(dirname "$0")/.."

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

wrangler dev --ip 127.0.0.1 --port "${PORT:-8787}" "${vars[@]}"
