//! The one JSON validator: plans and overrides, API request bodies and route rules are all
//! walked with `Obj`, so the same mistake gets the same words everywhere ("is required",
//! "unknown field (expected one of: …)", "must be a string, got a number"), always with the
//! field's path.
//!
//! It owns those words and the number boundary of JSON input (whole numbers up to 2^53 − 1). It
//! must never know what a field means: the callers decide that.

use serde_json::{Map, Value};

/// A refused field: its path (`limits[2].period`, `events[0].id`, `(body)`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// A refusal of `field` for `reason`.
pub fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError { field: field.into(), reason: reason.into() })
}

/// What a JSON value is, in words, for "got …".
pub const fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JavaScript numbers are exact only up to here, and every count goes back out as JSON (D1, the
/// API, headers): no count the gateway accepts may exceed it.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A non-negative float with no fraction, as a u64, when it is at most 2^53 − 1 (so exact).
#[allow(clippy::as_conversions, clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
fn exact_whole(f: f64) -> Option<u64> {
    // Both casts are exact here: every whole number up to 2^53 is an f64, and `f` is one.
    (f >= 0.0 && f <= MAX_SAFE_INTEGER as f64).then_some(f as u64)
}

/// A JSON whole number from 0 to 2^53 − 1, written as an integer or as a float with no fraction.
pub fn whole_number(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                if u > MAX_SAFE_INTEGER {
                    return Err(format!("must be at most {MAX_SAFE_INTEGER} (got {n})"));
                }
                Ok(u)
            } else if n.as_i64().is_some() {
                Err(format!("must not be negative (got {n})"))
            } else if n.as_f64().is_some_and(|f| f < 0.0) {
                Err(format!("must be a whole number that is not negative (got {n})"))
            } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                // A JSON number is a number: `519.0` is the whole number 519 (JSON Schema's
                // `integer` says so too, and so do clients whose numbers are all floats).
                exact_whole(f).ok_or_else(|| format!("must be at most {MAX_SAFE_INTEGER} (got {n})"))
            } else {
                Err(format!("must be a whole number (got {n})"))
            }
        }
        other => Err(format!("must be a whole number, got {}", kind(other))),
    }
}

/// A JSON object being validated: refuses keys it does not know, and names fields by path.
#[derive(Debug)]
pub struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// `v` as an object at `path` (empty for the request body), with only `allowed` keys.
    pub fn new(path: &str, v: &'a Value, allowed: &[&str]) -> Result<Self, FieldError> {
        let Value::Object(map) = v else {
            let at = if path.is_empty() { "(body)" } else { path };
            return err(at, format!("must be an object, got {}", kind(v)));
        };
        let obj = Self { path: path.to_owned(), map };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return err(obj.at(k), format!("unknown field (expected one of: {})", allowed.join(", ")));
        }
        Ok(obj)
    }

    /// The path of `key` in this object.
    pub fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value as given, null included (`None`: absent).
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    /// A present, non-null value.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn required(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.get(key).map_or_else(|| err(self.at(key), "is required"), Ok)
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => err(self.at(key), format!("must be a string, got {}", kind(v))),
        }
    }

    pub fn str_req(&self, key: &str) -> Result<&'a str, FieldError> {
        self.str_opt(key)?.map_or_else(|| err(self.at(key), "is required"), Ok)
    }

    /// A string of at most `max` characters (Unicode scalar values, as JSON Schema's `maxLength`
    /// counts them).
    pub fn string_max(&self, key: &str, max: usize) -> Result<Option<String>, FieldError> {
        match self.str_opt(key)? {
            Some(s) if s.chars().count() > max => err(self.at(key), format!("must be at most {max} characters")),
            s => Ok(s.map(str::to_owned)),
        }
    }

    pub fn uint_opt(&self, key: &str) -> Result<Option<u64>, FieldError> {
        self.get(key).map(|v| whole_number(v).map_err(|r| FieldError { field: self.at(key), reason: r })).transpose()
    }

    /// `true` or `false`; absent or null is `false`.
    pub fn flag(&self, key: &str) -> Result<bool, FieldError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => err(self.at(key), format!("must be true or false, got {}", kind(v))),
        }
    }

    /// An id (or any string type with a parser): `'<text>' <why not>` when it does not parse.
    pub fn id<T, E: std::fmt::Display>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, FieldError> {
        self.str_opt(key)?
            .map(|s| parse(s).map_err(|e| FieldError { field: self.at(key), reason: format!("'{s}' {e}") }))
            .transpose()
    }

    /// A required id.
    pub fn id_req<T, E: std::fmt::Display>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<T, FieldError> {
        self.id(key, parse)?.map_or_else(|| err(self.at(key), "is required"), Ok)
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>, FieldError> {
        let Some(s) = self.str_opt(key)? else {
            return Ok(None);
        };
        if let Some(&(_, t)) = options.iter().find(|(name, _)| *name == s) {
            return Ok(Some(t));
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        err(self.at(key), format!("unknown {key} '{s}' (expected one of: {})", names.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::MeterId;

    #[test]
    fn one_wording_for_one_mistake() {
        let v = json!({"meter": 5, "flag": "yes", "extra": 1});
        assert_eq!(
            Obj::new("", &v, &["meter", "flag"]).unwrap_err().to_string(),
            "extra: unknown field (expected one of: meter, flag)"
        );
        let o = Obj::new("events[3]", &v, &["meter", "flag", "extra"]).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(o.str_req("meter").unwrap_err().to_string(), "events[3].meter: must be a string, got a number");
        assert_eq!(o.flag("flag").unwrap_err().to_string(), "events[3].flag: must be true or false, got a string");
        assert_eq!(o.str_req("missing").unwrap_err().to_string(), "events[3].missing: is required");
        assert_eq!(Obj::new("", &json!([1]), &[]).unwrap_err().to_string(), "(body): must be an object, got an array");
        let bad = json!({"meter": "Bad Id"});
        let o = Obj::new("", &bad, &["meter"]).unwrap_or_else(|e| unreachable!("{e}"));
        let e = o.id_req("meter", MeterId::parse).unwrap_err().to_string();
        assert!(e.starts_with("meter: 'Bad Id' may contain only"), "{e}");
    }

    #[test]
    fn whole_numbers_stop_at_the_javascript_boundary() {
        assert_eq!(whole_number(&json!(9_007_199_254_740_991u64)), Ok(MAX_SAFE_INTEGER));
        assert!(whole_number(&json!(9_007_199_254_740_992u64)).is_err());
        assert_eq!(whole_number(&json!(-1)), Err("must not be negative (got -1)".into()));
        assert_eq!(whole_number(&json!(1.5)), Err("must be a whole number (got 1.5)".into()));
        // A float with no fraction is that whole number, up to the same bound.
        assert_eq!(whole_number(&json!(519.0)), Ok(519));
        assert_eq!(whole_number(&json!(-0.0)), Ok(0));
        assert_eq!(whole_number(&json!(9_007_199_254_740_991.0)), Ok(MAX_SAFE_INTEGER));
        assert_eq!(
            whole_number(&json!(9_007_199_254_740_992.0)),
            Err("must be at most 9007199254740991 (got 9007199254740992.0)".into())
        );
        assert_eq!(whole_number(&json!(1e300)), Err("must be at most 9007199254740991 (got 1e+300)".into()));
        // Read from text, a float is the f64 nearest to it (serde_json's float_roundtrip).
        let parsed: Value = serde_json::from_str("2074485636551161.0").unwrap_or_default();
        assert_eq!(whole_number(&parsed), Ok(2_074_485_636_551_161));
        assert_eq!(whole_number(&json!("5")), Err("must be a whole number, got a string".into()));
        // The SQL literal the ledger's reads cap counts at is this constant.
        assert_eq!(max_safe_sql!(), MAX_SAFE_INTEGER.to_string());
    }
}
