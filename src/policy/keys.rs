//! API keys, admin tokens, the origin and webhook signatures, and secret comparison.
//!
//! Owns the key format `qg_<org>.v<version>.<random>.<tag>`: the org id says which Durable
//! Object to ask, the version which key secret tagged it, and the tag (HMAC-SHA256 under that
//! secret, truncated to 128 bits) lets the Worker refuse a forged, mangled or retired key with
//! no I/O at all. Keys minted before versions existed (`qg_<org>.<random>.<tag>`) are version 1.
//! Owns the admin token format `qga_<id>.<random>` too. Only the SHA-256 of a key or a token is
//! ever stored. It must never draw randomness or read settings itself: callers pass both in.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ids::OrgId;
use super::secret::{KeySecrets, KeyVersion, Secret, Secrets};

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
    pub version: KeyVersion,
}

/// A key whose tag verified: its org, its id, the secret version and the hash to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub org: OrgId,
    pub key_id: String,
    pub hash: String,
    pub version: KeyVersion,
}

/// Why a presented key is refused before any I/O. All of these answer the same 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no API key")]
    Missing,
    #[error("malformed API key")]
    Malformed,
    /// Its secret version is no longer listed: retired keys are unknown keys.
    #[error("API key secret version is retired")]
    Retired,
    #[error("API key signature does not verify")]
    BadTag,
}

fn key_id(random_hex: &str) -> String {
    format!("key_{}", random_hex.get(..16).unwrap_or(random_hex))
}

/// Mints a key for `org` from caller-supplied randomness, under the current key secret.
pub fn mint(org: &OrgId, random: &[u8; KEY_RANDOM_BYTES], secrets: &KeySecrets) -> MintedKey {
    let (version, secret) = secrets.current();
    let random_hex = hex(random);
    let body = format!("{PREFIX}{org}.v{version}.{random_hex}");
    let mut m = mac(secret.expose());
    m.update(body.as_bytes());
    let tag = m.finalize().into_bytes();
    // The org, the version and four hex digits: enough to tell keys apart in a list.
    let prefix = format!("{PREFIX}{org}.v{version}.{}", random_hex.get(..4).unwrap_or_default());
    let plaintext = format!("{body}.{}", hex(tag.get(..TAG_BYTES).unwrap_or(&tag)));
    MintedKey { key_id: key_id(&random_hex), hash: sha256_hex(plaintext.as_bytes()), prefix, plaintext, version }
}

/// Parses a presented key and verifies its tag, in constant time, under the secret of the
/// version it names.
pub fn verify(presented: &str, secrets: &KeySecrets) -> Result<VerifiedKey, KeyError> {
    if presented.is_empty() {
        return Err(KeyError::Missing);
    }
    let rest = presented.strip_prefix(PREFIX).ok_or(KeyError::Malformed)?;
    let parts: Vec<&str> = rest.split('.').collect();
    let (org, version, random, tag) = match parts.as_slice() {
        [org, random, tag] => (*org, KeyVersion::FIRST, *random, *tag),
        [org, v, random, tag] => {
            let version = v.strip_prefix('v').and_then(KeyVersion::parse).ok_or(KeyError::Malformed)?;
            (*org, version, *random, *tag)
        }
        _ => return Err(KeyError::Malformed),
    };
    let org = OrgId::parse(org).map_err(|_| KeyError::Malformed)?;
    if random.len() != KEY_RANDOM_BYTES * 2 || unhex(random).is_none() {
        return Err(KeyError::Malformed);
    }
    let tag = unhex(tag).filter(|t| t.len() == TAG_BYTES).ok_or(KeyError::Malformed)?;
    let secret = secrets.get(version).ok_or(KeyError::Retired)?;
    let body_len = presented.len().saturating_sub(TAG_BYTES * 2 + 1);
    let mut m = mac(secret.expose());
    m.update(presented.get(..body_len).unwrap_or_default().as_bytes());
    m.verify_truncated_left(&tag).map_err(|_| KeyError::BadTag)?;
    Ok(VerifiedKey { org, key_id: key_id(random), hash: sha256_hex(presented.as_bytes()), version })
}

const TOKEN_PREFIX: &str = "qga_";
/// Random bytes in an admin token's id and in its secret part.
pub const TOKEN_ID_BYTES: usize = 8;
pub const TOKEN_SECRET_BYTES: usize = 16;

/// An admin token as minted: the plaintext is shown once; only `hash` is stored, under `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedToken {
    pub id: String,
    pub plaintext: Secret,
    pub hash: String,
    pub prefix: String,
}

/// Mints an admin token `qga_<16 hex id>.<32 hex>`: the id finds its row, the whole token's
/// SHA-256 is compared with the row's in constant time.
pub fn mint_token(id: &[u8; TOKEN_ID_BYTES], random: &[u8; TOKEN_SECRET_BYTES]) -> MintedToken {
    let id = format!("tok_{}", hex(id));
    let body = id.strip_prefix("tok_").unwrap_or_default();
    let plaintext = format!("{TOKEN_PREFIX}{body}.{}", hex(random));
    MintedToken {
        hash: sha256_hex(plaintext.as_bytes()),
        prefix: plaintext.chars().take(TOKEN_PREFIX.len().saturating_add(8)).collect(),
        id,
        plaintext: Secret::new(plaintext),
    }
}

/// The id a presented admin token names, if it has the shape of a minted one (nothing is
/// verified here: the caller looks the id up and compares hashes).
pub fn token_id(presented: &str) -> Option<String> {
    let (id, random) = presented.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n * 2 && unhex(s).is_some();
    (ok(id, TOKEN_ID_BYTES) && ok(random, TOKEN_SECRET_BYTES)).then(|| format!("tok_{id}"))
}

/// What the origin signature vouches for: every tenant header the origin receives, and the
/// request line as forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    pub ts_secs: u64,
    pub org: &'a str,
    pub plan: &'a str,
    pub key_id: &'a str,
    /// The id the org counted the request under: its Idempotency-Key, or one the gateway made.
    pub decision_id: &'a str,
    /// The request repeats an Idempotency-Key whose first request was served: it was not counted
    /// again, and the origin should answer from its own record of the first.
    pub replay: bool,
    pub method: &'a str,
    /// The normalized path and the query, exactly as forwarded.
    pub path_and_query: &'a str,
}

impl Signed<'_> {
    /// The string the origin signature covers, one field a line: `v2`, epoch seconds, org, plan,
    /// key id, decision id, `replay` or `first`, method, path (with query).
    pub fn signing_string(&self) -> String {
        let replay = if self.replay { "replay" } else { "first" };
        format!(
            "v2\n{}\n{}\n{}\n{}\n{}\n{replay}\n{}\n{}",
            self.ts_secs, self.org, self.plan, self.key_id, self.decision_id, self.method, self.path_and_query
        )
    }
}

/// `X-Quota-Signature`: `v2=<hex HMAC-SHA256(secret, signing string)>` under each listed
/// `ORIGIN_SECRET`, current first, joined by commas (one during a rotation, else one in all). An
/// origin accepts the request when any `v2=` matches under its own secret.
pub fn origin_signature(secrets: &Secrets, signed: &Signed<'_>) -> String {
    let signing = signed.signing_string();
    signatures("v2", secrets, &signing)
}

fn signatures(scheme: &str, secrets: &Secrets, data: &str) -> String {
    let mut out = String::with_capacity(secrets.iter().count().saturating_mul(68));
    for (i, s) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(scheme);
        out.push('=');
        out.push_str(&hmac_hex(s.expose(), data));
    }
    out
}

fn hmac_hex(secret: &[u8], data: &str) -> String {
    let mut m = mac(secret);
    m.update(data.as_bytes());
    hex(&m.finalize().into_bytes())
}

/// A proxied request's fingerprint, to which its `Idempotency-Key` is bound: the method, the
/// normalized path and query, the route's meter and cost, and the SHA-256 of the body (128 bits
/// of a SHA-256 over them, as 32 hex digits). The same key with another fingerprint is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

/// A fingerprint that is not 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a request fingerprint is 32 lowercase hex digits")]
pub struct BadFingerprint;

impl Fingerprint {
    /// `cost` is the route's cost as the plan format writes it (`10`, or `reported`).
    pub fn of(method: &str, path_and_query: &str, meter: &str, cost: &str, body: &[u8]) -> Self {
        let mut h = Sha256::new();
        // Each field is free of '\n' (a method token, a percent-encoded path, an id, a number),
        // so the lines cannot be shifted into one another.
        for field in ["quotagate-idempotency-v1", method, path_and_query, meter, cost] {
            h.update(field.as_bytes());
            h.update(b"\n");
        }
        h.update(Sha256::digest(body));
        Self(hex(h.finalize().get(..16).unwrap_or_default()))
    }

    pub fn parse(s: &str) -> Result<Self, BadFingerprint> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadFingerprint)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = BadFingerprint;
    fn try_from(s: String) -> Result<Self, BadFingerprint> {
        Self::parse(&s)
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.0
    }
}

/// `X-Quota-Webhook-Signature: t=<epoch secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, with
/// one `v1=` under each listed `WEBHOOK_SECRET` (Stripe's form during a rotation). Receivers
/// accept any `v1=` that matches under their secret and refuse a `t` older than a few minutes,
/// which stops replays.
pub fn webhook_signature(secrets: &Secrets, ts_secs: u64, body: &str) -> String {
    format!("t={ts_secs},{}", signatures("v1", secrets, &format!("{ts_secs}.{body}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    fn v(n: u16) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    /// Key secrets, current first: `[(2, "two"), (1, "one")]`.
    fn secrets(list: &[(u16, &str)]) -> KeySecrets {
        KeySecrets::of(list.iter().map(|(n, s)| (v(*n), Secret::new(*s))).collect()).unwrap()
    }

    #[test]
    fn minted_keys_verify_and_hash() {
        let k = mint(&org("acme"), &[7u8; 16], &secrets(&[(1, "secret")]));
        assert_eq!(k.plaintext.len(), "qg_acme.v1.".len() + 32 + 1 + 32);
        assert!(k.plaintext.starts_with("qg_acme.v1.07070707"));
        assert_eq!(k.key_id, "key_0707070707070707");
        assert_eq!((k.prefix.as_str(), k.version), ("qg_acme.v1.0707", v(1)));
        let got = verify(&k.plaintext, &secrets(&[(1, "secret")])).unwrap();
        assert_eq!((got.org, got.key_id, got.hash.clone()), (org("acme"), k.key_id.clone(), k.hash.clone()));
        assert_eq!(got.hash, sha256_hex(k.plaintext.as_bytes()));
        assert_eq!((got.hash.len(), got.version), (64, v(1)));
    }

    #[test]
    fn a_key_names_its_secret_version_until_the_version_is_retired() {
        let old = mint(&org("acme"), &[1u8; 16], &secrets(&[(1, "one")]));
        let rotating = secrets(&[(2, "two"), (1, "one")]);
        let new = mint(&org("acme"), &[2u8; 16], &rotating);
        assert!(new.plaintext.starts_with("qg_acme.v2.0202"));
        assert_eq!(verify(&old.plaintext, &rotating).map(|k| k.version), Ok(v(1)));
        assert_eq!(verify(&new.plaintext, &rotating).map(|k| k.version), Ok(v(2)));
        let retired = secrets(&[(2, "two")]);
        assert_eq!(verify(&old.plaintext, &retired), Err(KeyError::Retired));
        assert!(verify(&new.plaintext, &retired).is_ok());
        // The version is under the tag: a key cannot claim another one.
        let relabelled = new.plaintext.replacen(".v2.", ".v1.", 1);
        assert_eq!(verify(&relabelled, &rotating), Err(KeyError::BadTag));
        // A key of the format before versions is version 1, under version 1's secret.
        let body = format!("qg_acme.{}", hex(&[3u8; 16]));
        let legacy = format!("{body}.{}", hmac_hex(b"one", &body).get(..32).unwrap());
        assert_eq!(
            verify(&legacy, &rotating).map(|k| (k.version, k.key_id)),
            Ok((v(1), "key_0303030303030303".into()))
        );
        assert_eq!(verify(&legacy, &retired), Err(KeyError::Retired));
    }

    #[test]
    fn forged_and_malformed_keys_are_refused() {
        let s = secrets(&[(1, "secret")]);
        let k = mint(&org("acme"), &[1u8; 16], &s);
        assert_eq!(verify(&k.plaintext, &secrets(&[(1, "other")])), Err(KeyError::BadTag));
        // Same random and tag, another org: the tag covers the org.
        let forged = k.plaintext.replacen("qg_acme.", "qg_evil.", 1);
        assert_eq!(verify(&forged, &s), Err(KeyError::BadTag));
        let mut flipped = k.plaintext.clone();
        flipped.pop();
        flipped.push(if k.plaintext.ends_with('0') { '1' } else { '0' });
        assert_eq!(verify(&flipped, &s), Err(KeyError::BadTag));
        for bad in [
            "qg_",
            "sk_live_x",
            "qg_acme",
            "qg_acme.zz.zz",
            "qg_ACME.0101.0101",
            &format!("{}.x", k.plaintext),
            &k.plaintext.replacen(".v1.", ".v0.", 1),
            &k.plaintext.replacen(".v1.", ".v01.", 1),
            &k.plaintext.replacen(".v1.", ".1.", 1),
            &k.plaintext.replacen(".v1.", ".v1000.", 1),
        ] {
            assert_eq!(verify(bad, &s), Err(KeyError::Malformed), "{bad}");
        }
        assert_eq!(verify("", &s), Err(KeyError::Missing));
    }

    #[test]
    fn admin_tokens_name_their_row() {
        let t = mint_token(&[0xab; 8], &[0x01; 16]);
        assert_eq!(t.id, "tok_abababababababab");
        let plain = std::str::from_utf8(t.plaintext.expose()).unwrap().to_owned();
        assert_eq!(plain, format!("qga_abababababababab.{}", "01".repeat(16)));
        assert_eq!((t.hash.clone(), t.prefix.as_str()), (sha256_hex(plain.as_bytes()), "qga_abababab"));
        assert_eq!(token_id(&plain).as_deref(), Some("tok_abababababababab"));
        assert!(!format!("{t:?}").contains(&plain), "a minted token prints redacted");
        for bad in ["", "qga_", "qga_abab.0101", "test-admin-token", &format!("{plain}x"), &plain.replace('.', "")] {
            assert_eq!(token_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal(b"dev-admin-token", b"dev-admin-token"));
        assert!(!secrets_equal(b"dev-admin-tokeN", b"dev-admin-token"));
        assert!(!secrets_equal(b"", b""));
    }

    #[test]
    fn webhook_signature_covers_time_and_body() {
        let one = Secrets::of(vec![Secret::new("s")]).unwrap();
        let a = webhook_signature(&one, 100, "{}");
        assert!(a.starts_with("t=100,v1=") && a.len() == "t=100,v1=".len() + 64);
        assert_ne!(a, webhook_signature(&one, 101, "{}"));
        assert_ne!(a, webhook_signature(&one, 100, "{ }"));
        assert_eq!(a, format!("t=100,v1={}", hmac_hex(b"s", "100.{}")));
        // During a rotation: one v1= per secret, current first.
        let two = Secrets::of(vec![Secret::new("new"), Secret::new("s")]).unwrap();
        assert_eq!(
            webhook_signature(&two, 100, "{}"),
            format!("t=100,v1={},v1={}", hmac_hex(b"new", "100.{}"), hmac_hex(b"s", "100.{}"))
        );
    }

    #[test]
    fn origin_signature_is_hmac_sha256_of_every_field() {
        // RFC 4231 test case 2.
        let mac = hmac_hex(b"Jefe", "what do ya want for nothing?");
        assert_eq!(mac, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let s = Signed {
            ts_secs: 1,
            org: "o",
            plan: "p",
            key_id: "k",
            decision_id: "d",
            replay: false,
            method: "GET",
            path_and_query: "/x?y=1",
        };
        assert_eq!(s.signing_string(), "v2\n1\no\np\nk\nd\nfirst\nGET\n/x?y=1");
        let jefe = Secrets::of(vec![Secret::new("Jefe")]).unwrap();
        assert_eq!(origin_signature(&jefe, &s), format!("v2={}", hmac_hex(b"Jefe", &s.signing_string())));
        let rotating = Secrets::of(vec![Secret::new("new"), Secret::new("Jefe")]).unwrap();
        let both = origin_signature(&rotating, &s);
        assert_eq!(
            both,
            format!("v2={},v2={}", hmac_hex(b"new", &s.signing_string()), hmac_hex(b"Jefe", &s.signing_string()))
        );
        assert_eq!(Signed { replay: true, ..s }.signing_string(), "v2\n1\no\np\nk\nd\nreplay\nGET\n/x?y=1");
    }

    #[test]
    fn fingerprints_bind_every_field() {
        let base = Fingerprint::of("POST", "/v1/x?a=1", "requests", "1", b"{}");
        assert_eq!(base.as_str().len(), 32);
        assert_eq!(Fingerprint::parse(base.as_str()), Ok(base.clone()));
        assert_eq!(base, Fingerprint::of("POST", "/v1/x?a=1", "requests", "1", b"{}"));
        for other in [
            Fingerprint::of("PUT", "/v1/x?a=1", "requests", "1", b"{}"),
            Fingerprint::of("POST", "/v1/y?a=1", "requests", "1", b"{}"),
            Fingerprint::of("POST", "/v1/x?a=2", "requests", "1", b"{}"),
            Fingerprint::of("POST", "/v1/x?a=1", "tokens", "1", b"{}"),
            Fingerprint::of("POST", "/v1/x?a=1", "requests", "2", b"{}"),
            Fingerprint::of("POST", "/v1/x?a=1", "requests", "1", b"{ }"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(Fingerprint::parse("ABC"), Err(BadFingerprint));
        assert_eq!(Fingerprint::parse(&"G".repeat(32)), Err(BadFingerprint));
    }
}
