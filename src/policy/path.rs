//! The request path, normalized once: the gateway classifies, signs and forwards the same
//! string, so it never prices a different route than the one the origin serves.
//!
//! It owns the rules (RFC 3986 §6.2.2 and §5.2.4, plus what origins are known to read
//! differently) and must never see the query, which is forwarded as it came.
//!
//! - Percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded: `/v1/%65xport`
//!   is `/v1/export`. Every other escape stays encoded, its hex digits upper-cased (`%c3%a9` is
//!   `%C3%A9`).
//! - Dot segments are resolved after that decoding (`/a/%2E%2E/b` is `/b`); `..` above the root
//!   stays at the root. Empty segments go (`/a//b` is `/a/b`); a trailing `/` stays.
//! - An encoded `/` or `\` (`%2F`, `%5C`) is refused: some origins decode it into a separator
//!   and route on the result, others do not, so no one classification fits both. So is an
//!   encoded control character (`%00`–`%1F`, `%7F`), and a malformed escape.
//! - Case is kept: the path is forwarded as sent. Route rules match their literal segments
//!   without regard to ASCII case (see `classify`), so a case-insensitive origin cannot be
//!   reached at a cheaper price by changing case.

use std::fmt::Write as _;

/// Why a path cannot be normalized: the request is refused (400) rather than priced on a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape at byte {0}")]
    BadEscape(usize),
    #[error(
        "the path has an encoded '/' or '\\' (%2F or %5C) inside a segment, which origins route \
         differently; send it unencoded or in the query"
    )]
    EncodedSeparator,
    #[error("the path has an encoded control character (%00 to %1F, or %7F)")]
    EncodedControl,
}

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One segment with its unreserved escapes decoded and the others upper-cased. `at` is the
/// segment's offset in the whole path, for the error's byte position.
fn decode_segment(seg: &str, at: usize, out: &mut String) -> Result<(), PathError> {
    let bytes = seg.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            // `seg` is a str and '%' is ASCII, so the run up to the next '%' is whole chars.
            let end = seg.get(i..).and_then(|rest| rest.find('%')).map_or(bytes.len(), |n| i + n);
            out.push_str(seg.get(i..end).unwrap_or_default());
            i = end;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else { return Err(PathError::BadEscape(at + i)) };
        let v = hi * 16 + lo;
        match v {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
            v if unreserved(v) => out.push(char::from(v)),
            v => {
                let _ = write!(out, "%{v:02X}");
            }
        }
        i += 3;
    }
    Ok(())
}

/// Whether a path is already normal: no escape, no empty segment, no dot segment. The common
/// case, checked in one pass with no allocation but the copy it returns.
fn already_normal(rest: &str) -> bool {
    if rest.contains('%') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        // An empty last segment is the trailing '/', which stays.
        let last = segments.peek().is_none();
        if matches!(seg, "." | "..") || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The normalized form of a request path (no query, no fragment).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let Some(rest) = raw.strip_prefix('/') else { return Err(PathError::NotAbsolute) };
    if already_normal(rest) {
        return Ok(raw.to_owned());
    }
    normalize_full(raw)
}

/// `normalize` without the fast path: every segment decoded and resolved.
fn normalize_full(raw: &str) -> Result<String, PathError> {
    let Some(rest) = raw.strip_prefix('/') else { return Err(PathError::NotAbsolute) };
    let mut segments: Vec<String> = Vec::new();
    // Whether the path ends in a directory: a trailing '/', or a last segment of '.' or '..'.
    let mut trailing = false;
    let mut at = 1;
    for seg in rest.split('/') {
        let mut decoded = String::with_capacity(seg.len());
        decode_segment(seg, at, &mut decoded)?;
        at += seg.len() + 1;
        trailing = true;
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                segments.push(decoded);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_unreserved_and_resolves_dots() {
        for (raw, want) in [
            ("/", "/"),
            ("/v1/export/x/csv", "/v1/export/x/csv"),
            ("/v1/%65xport/x/csv", "/v1/export/x/csv"),
            ("/v1/%45XPORT", "/v1/EXPORT"),
            ("/%7e%2D%2e%5f", "/~-._"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/%2e/b/", "/a/b/"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("//a///b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%3Fb", "/a%3Fb"),
            ("/a;x=1/b", "/a;x=1/b"),
            ("/.well-known/x", "/.well-known/x"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_what_origins_read_differently() {
        assert_eq!(normalize("/v1/export%2Fx/csv"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/v1/export%2fx"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%00"), Err(PathError::EncodedControl));
        assert_eq!(normalize("/a%7f"), Err(PathError::EncodedControl));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize("/ab/c%4"), Err(PathError::BadEscape(5)));
        assert_eq!(normalize("/%"), Err(PathError::BadEscape(1)));
        assert_eq!(normalize("x"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_one() {
        for raw in [
            "/",
            "/a",
            "/a/",
            "/a/b/c",
            "//a",
            "/a//",
            "/a/.",
            "/./a",
            "/a/..",
            "/.well-known/x",
            "/a.b/c..d",
            "/%61",
            "/v1/%65xport/x",
            "/a/b/../c/",
        ] {
            assert_eq!(normalize(raw), normalize_full(raw), "{raw}");
        }
        assert!(already_normal("a/b/") && already_normal("") && !already_normal("a//b") && !already_normal("a/./b"));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in ["/v1/%65xport/./x/../y//", "/caf%c3%a9/%7e", "/a/b/..", "/"] {
            let once = normalize(raw).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{raw}");
        }
    }
}
