//! API keys, the origin signature, and secret comparison.
//!
//! Owns the key format `qg_<org>.<random>.<tag>`: the org id says which Durable Object to ask,
//! and the tag (HMAC-SHA256 under `KEY_SECRET`, truncated to 128 bits) lets the Worker refuse a
//! forged or mangled key with no I/O at all. Only the SHA-256 of a key is ever stored. It must
//! never draw randomness or read secrets itself: callers pass both in.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ids::OrgId;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "qg_";
/// Random bytes in a key: 128 bits.
pub const KEY_RANDOM_BYTES: usize = 16;
const TAG_BYTES: usize = 16;

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        s.push(char::from(DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
        s.push(char::from(DIGITS.get(usize::from(b & 0xf)).copied().unwrap_or(b'0')));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(c.wrapping_sub(b'a').wrapping_add(10)),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some((digit(*p.first()?)? << 4) | digit(*p.get(1)?)?)).collect()
}

/// Lowercase hex SHA-256, the only form in which keys are stored.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this never fails.
    <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&hmac::digest::generic_array::GenericArray::default()))
}

/// Compares two secrets in constant time (for any lengths: both sides are hashed first, so the
/// comparison time does not reveal the expected length either).
pub fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    bool::from(a.ct_eq(&b)) && !expected.is_empty()
}

/// A key as minted: the plaintext is shown to the admin once; only `hash` is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedKey {
    pub key_id: String,
    pub plaintext: String,
    pub hash: String,
    /// The first characters, for people to recognise a key in a list.
    pub prefix: String,
}

/// A key whose tag verified: its org, its id and the hash to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub org: OrgId,
    pub key_id: String,
    pub hash: String,
}

/// Why a presented key is refused before any I/O. All of these answer the same 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no API key")]
    Missing,
    #[error("malformed API key")]
    Malformed,
    #[error("API key signature does not verify")]
    BadTag,
}

fn key_id(random_hex: &str) -> String {
    format!("key_{}", random_hex.get(..16).unwrap_or(random_hex))
}

/// Mints a key for `org` from caller-supplied randomness.
pub fn mint(org: &OrgId, random: &[u8; KEY_RANDOM_BYTES], secret: &[u8]) -> MintedKey {
    let body = format!("{PREFIX}{org}.{}", hex(random));
    let mut m = mac(secret);
    m.update(body.as_bytes());
    let tag = m.finalize().into_bytes();
    let plaintext = format!("{body}.{}", hex(tag.get(..TAG_BYTES).unwrap_or(&tag)));
    MintedKey {
        key_id: key_id(&hex(random)),
        hash: sha256_hex(plaintext.as_bytes()),
        prefix: plaintext.chars().take(PREFIX.len().saturating_add(org.as_str().len()).saturating_add(5)).collect(),
        plaintext,
    }
}

/// Parses a presented key and verifies its tag in constant time.
pub fn verify(presented: &str, secret: &[u8]) -> Result<VerifiedKey, KeyError> {
    if presented.is_empty() {
        return Err(KeyError::Missing);
    }
    let rest = presented.strip_prefix(PREFIX).ok_or(KeyError::Malformed)?;
    let mut parts = rest.split('.');
    let (Some(org), Some(random), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(KeyError::Malformed);
    };
    let org = OrgId::parse(org).map_err(|_| KeyError::Malformed)?;
    if random.len() != KEY_RANDOM_BYTES * 2 || unhex(random).is_none() {
        return Err(KeyError::Malformed);
    }
    let tag = unhex(tag).filter(|t| t.len() == TAG_BYTES).ok_or(KeyError::Malformed)?;
    let body_len = presented.len().saturating_sub(TAG_BYTES * 2 + 1);
    let mut m = mac(secret);
    m.update(presented.get(..body_len).unwrap_or_default().as_bytes());
    m.verify_truncated_left(&tag).map_err(|_| KeyError::BadTag)?;
    Ok(VerifiedKey { org, key_id: key_id(random), hash: sha256_hex(presented.as_bytes()) })
}

/// The string the origin signature covers, one field a line:
/// `v1`, epoch seconds, org, plan, method, path (with query).
pub fn origin_signing_string(ts_secs: u64, org: &str, plan: &str, method: &str, path_and_query: &str) -> String {
    format!("v1\n{ts_secs}\n{org}\n{plan}\n{method}\n{path_and_query}")
}

/// `X-Quota-Signature`: `v1=<hex HMAC-SHA256(ORIGIN_SECRET, signing string)>`.
pub fn origin_signature(secret: &[u8], signing_string: &str) -> String {
    let mut m = mac(secret);
    m.update(signing_string.as_bytes());
    format!("v1={}", hex(&m.finalize().into_bytes()))
}

/// `X-Quota-Webhook-Signature: t=<epoch secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
/// Receivers recompute it and refuse a `t` older than a few minutes, which stops replays.
pub fn webhook_signature(secret: &[u8], ts_secs: u64, body: &str) -> String {
    let mut m = mac(secret);
    m.update(format!("{ts_secs}.{body}").as_bytes());
    format!("t={ts_secs},v1={}", hex(&m.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    #[test]
    fn minted_keys_verify_and_hash() {
        let k = mint(&org("acme"), &[7u8; 16], b"secret");
        assert_eq!(k.plaintext.len(), "qg_acme.".len() + 32 + 1 + 32);
        assert!(k.plaintext.starts_with("qg_acme.07070707"));
        assert_eq!(k.key_id, "key_0707070707070707");
        assert_eq!(k.prefix, "qg_acme.0707");
        let v = verify(&k.plaintext, b"secret").unwrap();
        assert_eq!((v.org, v.key_id, v.hash.clone()), (org("acme"), k.key_id.clone(), k.hash.clone()));
        assert_eq!(v.hash, sha256_hex(k.plaintext.as_bytes()));
        assert_eq!(v.hash.len(), 64);
    }

    #[test]
    fn forged_and_malformed_keys_are_refused() {
        let k = mint(&org("acme"), &[1u8; 16], b"secret");
        assert_eq!(verify(&k.plaintext, b"other"), Err(KeyError::BadTag));
        // Same random and tag, another org: the tag covers the org.
        let forged = k.plaintext.replacen("qg_acme.", "qg_evil.", 1);
        assert_eq!(verify(&forged, b"secret"), Err(KeyError::BadTag));
        let mut flipped = k.plaintext.clone();
        flipped.pop();
        flipped.push(if k.plaintext.ends_with('0') { '1' } else { '0' });
        assert_eq!(verify(&flipped, b"secret"), Err(KeyError::BadTag));
        for bad in ["qg_", "sk_live_x", "qg_acme", "qg_acme.zz.zz", "qg_ACME.0101.0101", &format!("{}.x", k.plaintext)]
        {
            assert_eq!(verify(bad, b"secret"), Err(KeyError::Malformed), "{bad}");
        }
        assert_eq!(verify("", b"secret"), Err(KeyError::Missing));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal(b"dev-admin-token", b"dev-admin-token"));
        assert!(!secrets_equal(b"dev-admin-tokeN", b"dev-admin-token"));
        assert!(!secrets_equal(b"", b""));
    }

    #[test]
    fn webhook_signature_covers_time_and_body() {
        let a = webhook_signature(b"s", 100, "{}");
        assert!(a.starts_with("t=100,v1=") && a.len() == "t=100,v1=".len() + 64);
        assert_ne!(a, webhook_signature(b"s", 101, "{}"));
        assert_ne!(a, webhook_signature(b"s", 100, "{ }"));
        assert_eq!(a, format!("t=100,{}", origin_signature(b"s", "100.{}")));
    }

    #[test]
    fn origin_signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = origin_signature(b"Jefe", "what do ya want for nothing?");
        assert_eq!(sig, "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(origin_signing_string(1, "o", "p", "GET", "/x?y=1"), "v1\n1\no\np\nGET\n/x?y=1");
    }
}
