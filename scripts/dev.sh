#!/usr/bin/env bash
# `make dev`: applies the D1 migrations to the local ledger, then serves the gateway on
# 127.0.0.1:8787 under wrangler dev with a demo origin:
# - by default the origin is a Worker (tests/e2e/workers/origin.mjs) bound to the gateway as the
#   `ORIGIN` service, as a provider whose API is a Worker would deploy it; the HTTP demo origin
#   (tests/support/origin.mjs) runs beside it on DEMO_ORIGIN_PORT (8788), as `ORIGIN_URL`;
# - DEV_ORIGIN=http leaves the binding out: the gateway forwards to the HTTP demo origin;
# - ORIGIN_URL set: the gateway forwards there, and no demo origin runs.
# STRIPE_API_BASE and ALERT_WEBHOOK_URL are passed from the environment to the Worker when they
# are set. PORT moves the gateway, DEMO_ORIGIN_PORT the HTTP demo origin, and DEV_STATE the local
# Durable Object and D1 state (wrangler's own default, .wrangler/state).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

state="${DEV_STATE:-.wrangler/state}"
wrangler d1 migrations apply LEDGER --local --persist-to "$state"

vars=()
origin_pid=""
configs=(-c wrangler.toml)
if [ -n "${ORIGIN_URL:-}" ]; then
  echo "gateway → origin ${ORIGIN_URL}"
else
  port="${DEMO_ORIGIN_PORT:-8788}"
  node tests/support/origin.mjs "$port" &
  origin_pid=$!
  ORIGIN_URL="http://127.0.0.1:${port}"
  if [ "${DEV_ORIGIN:-worker}" != "http" ]; then
    # wrangler.toml itself binds no origin Worker (a deployment names its own): the dev session
    # runs a copy with the binding added, its paths made absolute, beside the origin Worker's.
    dir=build/dev
    mkdir -p "$dir"
    sed -E -e "s#^main = \"(.*)\"#main = \"${root}/\\1\"#" -e "s#^migrations_dir = \"(.*)\"#migrations_dir = \"${root}/\\1\"#" \
      wrangler.toml > "$dir/wrangler.toml"
    printf '\n# make dev: the origin is a Worker, bound as a service (scripts/dev.sh).\n[[services]]\nbinding = "ORIGIN"\nservice = "quotagate-demo-origin"\n' >> "$dir/wrangler.toml"
    printf 'name = "quotagate-demo-origin"\nmain = "%s/tests/e2e/workers/origin.mjs"\ncompatibility_date = "2026-10-01"\n' "$root" > "$dir/origin.toml"
    # wrangler reads .dev.vars beside the config it is given.
    [ -f .dev.vars ] && ln -sf "${root}/.dev.vars" "$dir/.dev.vars"
    configs=(-c "$dir/wrangler.toml" -c "$dir/origin.toml")
    echo "gateway → origin Worker quotagate-demo-origin (service binding ORIGIN); HTTP demo origin on ${ORIGIN_URL}"
  fi
fi
vars+=(--var "ORIGIN_URL:${ORIGIN_URL}")
for name in STRIPE_API_BASE ALERT_WEBHOOK_URL; do
  if [ -n "${!name:-}" ]; then vars+=(--var "${name}:${!name}"); fi
done

cleanup() { [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wrangler dev "${configs[@]}" --ip 127.0.0.1 --port "${PORT:-8787}" --persist-to "$state" "${vars[@]}"
