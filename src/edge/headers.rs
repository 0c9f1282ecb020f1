//! Header lists the proxy reads and rewrites, each in one call to JavaScript
//! (worker/headers.mjs): the names a request or response carries, and a copy with some removed
//! and some set. Reading a `Headers` name by name through wasm-bindgen costs four crossings a
//! name; a proxied request has a dozen.
//!
//! It owns only the transport of names and values: which headers are withheld or added is the
//! caller's decision (`proxy::withheld`), and it must never decide one itself.

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::Headers;

use super::error::EdgeError;

#[wasm_bindgen(module = "/worker/headers.mjs")]
extern "C" {
    #[wasm_bindgen(js_name = headerNames)]
    fn header_names(headers: &web_sys::Headers) -> String;
    #[wasm_bindgen(catch, js_name = rewriteHeaders)]
    fn rewrite_headers(headers: Option<&web_sys::Headers>, drop: &str, set: &str) -> Result<web_sys::Headers, JsValue>;
}

/// The names `headers` holds (lowercase), read in one call.
pub struct Names(String);

impl Names {
    pub fn of(headers: &Headers) -> Self {
        Self(header_names(&headers.0))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split('\n').filter(|n| !n.is_empty())
    }
}

/// The changes to make to a copy of a header list: names to remove, then pairs to set.
#[derive(Default)]
pub struct Rewrite {
    drop: String,
    set: String,
}

impl Rewrite {
    /// Removes `name` from the copy.
    pub fn drop(&mut self, name: &str) {
        push(&mut self.drop, name);
    }

    /// Sets `name` to `value` in the copy. A line break in either is refused, as fetch would
    /// refuse it (and it would split the list).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EdgeError> {
        if name.contains(['\n', '\r']) || value.contains(['\n', '\r']) {
            return Err(EdgeError::Internal(format!("header {name}: a line break in a header")));
        }
        push(&mut self.set, name);
        push(&mut self.set, value);
        Ok(())
    }

    /// A copy of `headers` with the changes made, in one call.
    pub fn apply(&self, headers: &Headers) -> Result<Headers, EdgeError> {
        self.call(Some(headers))
    }

    /// A new header list of the pairs set, in one call.
    pub fn build(&self) -> Result<Headers, EdgeError> {
        self.call(None)
    }

    fn call(&self, headers: Option<&Headers>) -> Result<Headers, EdgeError> {
        rewrite_headers(headers.map(|h| &h.0), items(&self.drop), items(&self.set))
            .map(Headers)
            .map_err(|e| EdgeError::Internal(format!("headers: {e:?}")))
    }
}

/// Appends `item` to a list kept as "\n" before each item, so an empty value is an item too.
fn push(list: &mut String, item: &str) {
    list.push('\n');
    list.push_str(item);
}

/// The list as JavaScript reads it: the items joined by "\n" (the first separator dropped).
fn items(list: &str) -> &str {
    list.strip_prefix('\n').unwrap_or(list)
}
