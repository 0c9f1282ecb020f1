// The proxy's header work, one call from Rust each (src/edge/headers.rs). Rust decides which
// headers go and which are added; these functions only carry that out, so a proxied request
// crosses between wasm and JavaScript a few times for its headers instead of four times per
// header name (an iterator step, its `done`, its `value` and the string) plus once per change.
// Header names and values never hold a line feed (fetch refuses them), so "\n" joins them.

/** The names of `headers` (lowercase, as fetch gives them), joined by "\n". */
export function headerNames(headers) {
  let out = "";
  for (const name of headers.keys()) out = out === "" ? name : `${out}\n${name}`;
  return out;
}

/**
 * A copy of `headers` (or a new list, when undefined) without the names in `drop` and with the
 * name/value pairs in `set` (both "\n"-joined; `set` alternates name and value).
 */
export function rewriteHeaders(headers, drop, set) {
  const out = new Headers(headers);
  if (drop !== "") for (const name of drop.split("\n")) out.delete(name);
  if (set !== "") {
    const kv = set.split("\n");
    for (let i = 0; i + 1 < kv.length; i += 2) out.set(kv[i], kv[i + 1]);
  }
  return out;
}
