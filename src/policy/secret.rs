//! Secrets in memory: a value whose `Debug` and `Display` print nothing of it, the ordered lists
//! a rotation needs (several signing secrets, current first) and the versioned key secrets.
//!
//! It owns how a secret may be read (`expose`, by name, so every use is greppable) and the
//! version numbers keys carry. It must never print, log or compare a secret itself: comparison
//! is `keys::secrets_equal`'s, in constant time.

use std::fmt;
use std::num::NonZeroU16;

/// A secret setting (a key secret, a signing secret, a token). Formatting it prints
/// `[redacted]`, so a `{:?}` of a struct that holds one never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for a MAC or a constant-time comparison only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret as text, for the one header that must carry it (a bearer token to Stripe, a
    /// plaintext shown once).
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The most secrets one signing variable may list during a rotation.
pub const MAX_SIGNING_SECRETS: usize = 4;

/// A signing secret and the older ones still honoured during a rotation, current first, never
/// empty. Whatever is signed carries one signature under each, so a receiver that knows any one
/// of them verifies (Stripe's `v1=…,v1=…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    current: Secret,
    older: Vec<Secret>,
}

impl Secrets {
    /// `None` for an empty list.
    pub fn of(list: Vec<Secret>) -> Option<Self> {
        let mut it = list.into_iter();
        let current = it.next()?;
        Some(Self { current, older: it.collect() })
    }

    /// Every secret, current first.
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.current).chain(self.older.iter())
    }

    pub const fn current(&self) -> &Secret {
        &self.current
    }
}

/// The version of the key secret that tagged a key: 1 to `KeyVersion::MAX`. Keys minted before
/// versions existed carry none and are version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyVersion(NonZeroU16);

impl KeyVersion {
    pub const MAX: u16 = 999;
    pub const FIRST: Self = Self(NonZeroU16::MIN);

    pub fn new(n: u16) -> Option<Self> {
        NonZeroU16::new(n).filter(|n| n.get() <= Self::MAX).map(Self)
    }

    /// `"7"` → version 7; anything else (a sign, a leading zero, `v7`, 1000) → `None`.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 3 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok().and_then(Self::new)
    }

    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The most key secret versions a deployment may accept at once.
pub const MAX_KEY_VERSIONS: usize = 8;

/// The key secrets a deployment accepts, by version, current first (new keys are minted under
/// the current one). A key whose version is not listed is retired: it gets the 401 of any
/// unknown key, with no I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySecrets {
    current: (KeyVersion, Secret),
    older: Vec<(KeyVersion, Secret)>,
}

impl KeySecrets {
    /// `None` for an empty list or a version listed twice.
    pub fn of(list: Vec<(KeyVersion, Secret)>) -> Option<Self> {
        let mut seen: Vec<KeyVersion> = list.iter().map(|(v, _)| *v).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != list.len() {
            return None;
        }
        let mut it = list.into_iter();
        let current = it.next()?;
        Some(Self { current, older: it.collect() })
    }

    /// The version new keys are minted under, and its secret.
    pub fn current(&self) -> (KeyVersion, &Secret) {
        (self.current.0, &self.current.1)
    }

    /// The secret of `version`, if it is still listed.
    pub fn get(&self, version: KeyVersion) -> Option<&Secret> {
        std::iter::once(&self.current).chain(self.older.iter()).find(|(v, _)| *v == version).map(|(_, s)| s)
    }

    /// Every listed version, current first.
    pub fn versions(&self) -> Vec<KeyVersion> {
        std::iter::once(&self.current).chain(self.older.iter()).map(|(v, _)| *v).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?} {s} {s:#?}"), "[redacted] [redacted] [redacted]");
        let list = Secrets::of(vec![s.clone(), Secret::new("older-secret")]).unwrap();
        let shown = format!("{list:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("older-secret"), "{shown}");
        assert_eq!(list.iter().count(), 2);
        assert_eq!(list.current().expose(), b"hunter2-very-secret");
    }

    #[test]
    fn versions_are_small_whole_numbers() {
        assert_eq!(KeyVersion::parse("1"), Some(KeyVersion::FIRST));
        assert_eq!(KeyVersion::parse("999").map(KeyVersion::get), Some(999));
        for bad in ["", "0", "01", "1000", "-1", "v2", "2 ", "1e2"] {
            assert_eq!(KeyVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_secrets_list_each_version_once_current_first() {
        let v = |n| KeyVersion::new(n).unwrap();
        let ks = KeySecrets::of(vec![(v(3), Secret::new("c")), (v(2), Secret::new("b"))]).unwrap();
        assert_eq!(ks.current().0, v(3));
        assert_eq!(ks.get(v(2)).map(Secret::expose), Some(&b"b"[..]));
        assert_eq!(ks.get(v(1)), None);
        assert_eq!(ks.versions(), [v(3), v(2)]);
        assert_eq!(KeySecrets::of(vec![(v(2), Secret::new("a")), (v(2), Secret::new("b"))]), None);
        assert_eq!(KeySecrets::of(Vec::new()), None);
    }
}
