#!/usr/bin/env bash
# `make build`: the Rust crate → build/index.js (the wasm-bindgen glue, minified) and
# build/index_bg.wasm (optimized, stripped), which worker/entry.mjs imports.
#
# This is the part of worker-build the project uses, done with tools it already has, because
# compiling worker-build itself took 6 min (622 CPU-seconds) of a fresh machine's set-up:
#   1. cargo builds the library for wasm32 (release profile: opt-level s, LTO);
#   2. wasm-bindgen writes the ES-module glue, with the reset-state function and the abort
#      handler that worker/entry.mjs's panic recovery calls. It is tools/bindgen, the library the
#      wasm-bindgen CLI calls, with the CLI's settings for `--target module --out-name index
#      --no-typescript --experimental-reset-state-function --force-enable-abort-handler`: its
#      output was compared byte for byte with the CLI's (0.2.130) and is identical;
#   3. wasm-opt -Oz (npm's binaryen) shrinks the wasm; a copy that keeps the function names goes
#      to target/ for `make bench`'s profile, and the shipped one is stripped of names and
#      producers (about 210 KiB raw, 50 KiB gzip, read only by a panic's stack trace);
#   4. esbuild (npm's) inlines wasm-bindgen's snippet and minifies the glue.
# The entry module (the Worker's handlers, the Durable Object class and panic recovery) is
# worker/entry.mjs, in the repository: nothing is generated around it.
#
# `build-worker.sh compile` does step 1 alone (it needs only cargo, so `make test` runs it beside
# the tool installs); `build-worker.sh package` does steps 2 to 4 and needs WASM_BINDGEN_BIN,
# WASM_OPT_BIN and ESBUILD_BIN (the Makefile sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: build-worker.sh compile|package}
WASM=target/wasm32-unknown-unknown/release/quotagate.wasm

if [ "$what" = compile ]; then
  # wasm-bindgen's proc-macro reads this at expansion time (cargo does not pass --cfg to host
  # proc-macros under --target): futures through js_sys, as the worker crate expects.
  WASM_BINDGEN_USE_JS_SYS=1 cargo build --locked --lib --release --target wasm32-unknown-unknown
  touch "$WASM" # cargo leaves an up-to-date file as it was; make compares times
  exit 0
fi
[ "$what" = package ] || { echo "usage: build-worker.sh compile|package" >&2; exit 2; }
: "${WASM_BINDGEN_BIN:?set by the Makefile}" "${WASM_OPT_BIN:?set by the Makefile}" "${ESBUILD_BIN:?set by the Makefile}"
# The feature set the wasm may use: rustc's wasm32-unknown-unknown defaults plus the exception
# handling wasm-bindgen's catch wrappers use. Explicit, so that wasm-opt never emits an encoding
# newer than workerd reads.
FEATURES=(mutable-globals sign-ext nontrapping-float-to-int bulk-memory multivalue reference-types exception-handling)
ENABLE=("${FEATURES[@]/#/--enable-}")

stage=build/.stage
rm -rf "$stage" && mkdir -p "$stage" target
"$WASM_BINDGEN_BIN" "$WASM" "$stage"

"$WASM_OPT_BIN" "$stage/index_bg.wasm" -Oz --debuginfo "${ENABLE[@]}" -o target/index_bg.named.wasm
"$WASM_OPT_BIN" target/index_bg.named.wasm --strip-debug --strip-producers "${ENABLE[@]}" -o "$stage/index_bg.wasm"

# The glue imports its module as a source-phase import (`import source`); wrangler's bundler
# takes the plain import of a .wasm as the compiled module, which is the same thing.
sed -i 's/^import source /import /' "$stage/index.js"
grep -q '^import [A-Za-z_$]* from "./index_bg.wasm";' "$stage/index.js" || {
  echo "build-worker: the wasm-bindgen glue no longer imports ./index_bg.wasm as expected" >&2
  exit 1
}
"$ESBUILD_BIN" "$stage/index.js" --bundle --format=esm --minify --log-level=warning \
  --external:./index_bg.wasm --external:cloudflare:* --outfile="$stage/index.bundled.js"

mv "$stage/index.bundled.js" build/index.js
mv "$stage/index_bg.wasm" build/index_bg.wasm
rm -rf "$stage" build/worker build/package.json build/snippets
