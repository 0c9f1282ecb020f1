//! The deployment's settings: every variable and secret, parsed once by one pure function
//! (`Settings::parse`) into a validated `Settings`, with one exact message per bad value.
//!
//! It owns the names, the defaults, the ranges and the wording. It must never fall back from a
//! bad value to a default: a value that is set and wrong is a `SettingError`, which healthz
//! reports (503) and every request that needs that setting answers with (503, the same message).
//! A missing secret is not an error here (an empty deployment still answers healthz); whatever
//! needs it fails closed when it is used. It does no I/O: the caller hands it a lookup.

use std::fmt;
use std::rc::Rc;

use crate::org::rules::DEFAULT_ALERT_ATTEMPTS;
use crate::policy::classify::Routes;
use crate::policy::recall;
use crate::policy::secret::{KeySecrets, KeyVersion, Secret, Secrets, MAX_KEY_VERSIONS, MAX_SIGNING_SECRETS};
use crate::telemetry::DecisionLog;

/// How long a failed origin call may still give its request's units back (the DO keeps the hold
/// in memory only): `PROXY_RELEASE_WINDOW_SECS`, 1 to 3600.
const DEFAULT_RELEASE_WINDOW_SECS: u64 = 120;
/// How often an org's open ledger buckets go to D1: `LEDGER_FLUSH_SECS`, 1 to 300.
const DEFAULT_LEDGER_FLUSH_SECS: u64 = 30;
/// How old an org DO's copy of its plan may grow before it re-reads the plan's version from D1:
/// `PLAN_REFRESH_SECS`, 1 to 3600.
const DEFAULT_PLAN_REFRESH_SECS: u64 = 60;
/// How often an active org reconciles its counters with the ledger and publishes its gauges:
/// `ORG_REPORT_SECS`, 1 to 86400.
const DEFAULT_ORG_REPORT_SECS: u64 = 300;
/// Hourly ledger rows are kept at least this many days (Stripe accepts usage 35 days back).
pub const MIN_HOURLY_RETENTION_DAYS: u64 = 40;
/// The most ledger shards (`LEDGER`, `LEDGER_1`, …) a deployment may spread orgs over.
pub const MAX_LEDGER_SHARDS: u32 = 64;

/// What a request or a job needs of the settings: a bad setting fails only what needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A proxied request.
    Proxy,
    /// The usage API (`/v1/check`, `/v1/events`, `/v1/usage…`, reservations).
    UsageApi,
    /// The admin API.
    Admin,
    /// The org's Durable Object: the ledger flush, reconciliation and alert delivery.
    Org,
    /// The cron and Stripe reporting.
    Cron,
}

/// A setting that is set and wrong: the variable and why, in the one wording healthz and every
/// refused request use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub var: &'static str,
    pub reason: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `ROUTES[0].path: …` names the field inside the variable itself.
        if self.reason.starts_with('[') {
            write!(f, "{}{}", self.var, self.reason)
        } else {
            write!(f, "{}: {}", self.var, self.reason)
        }
    }
}

/// Which parts of the gateway each variable's value matters to.
fn needed_by(var: &str) -> &'static [Need] {
    use Need::{Admin, Cron, Org, Proxy, UsageApi};
    match var {
        "ROUTES"
        | "ORIGIN_URL"
        | "ORIGIN_SECRET"
        | "RESERVED_HEADER_PREFIXES"
        | "PROXY_RELEASE_WINDOW_SECS"
        | "REFUSAL_MEMORY_MS" => &[Proxy],
        // Keys are verified by the proxy and the usage API, and minted by the admin API.
        "KEY_SECRETS" | "KEY_SECRET" => &[Proxy, UsageApi, Admin],
        "LEDGER_SHARDS" => &[Admin, Cron, UsageApi, Org],
        "WEBHOOK_SECRET" | "ALERT_WEBHOOK_URL" | "ALERT_MAX_ATTEMPTS" => &[Org, Cron],
        "STRIPE_API_BASE" => &[Cron, Admin],
        "RETENTION_DAYS" | "HOURLY_RETENTION_DAYS" => &[Cron],
        "LEDGER_FLUSH_SECS" | "PLAN_REFRESH_SECS" | "ORG_REPORT_SECS" | "RECONCILE_AUTOFIX_PCT" => &[Org],
        "USAGE_API_READS_PER_MINUTE" | "USAGE_API_CALLS_PER_MINUTE" => &[UsageApi, Org],
        // The clock, the logs and the faults touch every request.
        _ => &[Proxy, UsageApi, Admin, Org, Cron],
    }
}

/// The deployment's settings, validated. Every secret in it is a `Secret`, so its `Debug` (which
/// a log line or a panic message may print) shows none of them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `KEY_SECRETS` (versioned, current first) and `KEY_SECRET` (version 1, listed last).
    pub key_secrets: Option<KeySecrets>,
    pub origin_url: Option<String>,
    /// `ORIGIN_SECRET`: one secret, or during a rotation several, current first.
    pub origin_secret: Option<Secrets>,
    pub routes: Rc<Routes>,
    pub release_window_ms: u64,
    /// How long an isolate may answer a hard refusal from memory (`REFUSAL_MEMORY_MS`, 0 to
    /// `policy::recall::MAX_MEMORY_MS`, default `DEFAULT_MEMORY_MS`; 0 asks the DO every time):
    /// the bound on how late a reset, a plan change or a revocation reaches a refused client.
    pub refusal_memory_ms: u64,
    /// `QUOTA_FAULTS` (tests only).
    pub faults: Faults,
    pub decision_log: DecisionLog,
    /// `QUOTA_CLOCK_OFFSET_MS` (tests only): shifts the clock so end-to-end tests can cross a
    /// real period boundary. Zero unless set.
    pub clock_offset_ms: i64,
    pub metrics_flush_ms: u64,
    /// The bootstrap admin token (scope `write`, named `ADMIN_TOKEN` in the audit log). Unset,
    /// only named admin tokens (stored in D1) open the admin API.
    pub admin_token: Option<Secret>,
    /// Daily ledger rows and audit rows older than this many days are pruned (default 400).
    pub retention_days: u64,
    /// Hourly ledger rows are pruned after this many days (`HOURLY_RETENTION_DAYS`, at least 40).
    pub hourly_retention_days: u64,
    pub ledger_flush_ms: u64,
    pub plan_refresh_ms: u64,
    /// How often an active org's DO reconciles and publishes its gauges (`ORG_REPORT_SECS`).
    pub report_every_ms: u64,
    /// The usage API's own limits per org and minute (0 turns one off).
    pub api_reads_per_minute: u64,
    pub api_calls_per_minute: u64,
    /// An org's own report repairs drift of at most this percent of what the ledger expects.
    pub reconcile_autofix_pct: u64,
    /// How many ledger shards (`LEDGER`, `LEDGER_1`, …) new orgs are spread over.
    pub ledger_shards: u32,
    /// Where alerts go for orgs without a `webhook_url`.
    pub alert_webhook_url: Option<String>,
    /// Delivery attempts before an alert is dead: 1..20, default 8.
    pub alert_max_attempts: u32,
    /// Signs threshold-alert webhooks. Unset: no alert is sent (they wait, refused), never
    /// unsigned.
    pub webhook_secret: Option<Secrets>,
    pub stripe_api_base: String,
    /// Reporting to Stripe is skipped without it.
    pub stripe_secret_key: Option<Secret>,
    /// `QUOTA_DEBUG_WORK` (tests and benchmarks): the org DO reports its `SQLite` work.
    pub debug_work: bool,
    /// `RESERVED_HEADER_PREFIXES`: client headers with these prefixes (lower case) never reach
    /// the origin, besides the ones the gateway always withholds.
    pub reserved_header_prefixes: Vec<String>,
    /// Every setting that is set and wrong, in the order the variables are read.
    pub errors: Vec<SettingError>,
}

/// Faults a test injects with `QUOTA_FAULTS` (comma separated); never set in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// `do_unavailable`: the gateway acts as if the org's DO did not answer.
    pub do_unavailable: bool,
    /// `panic`: `GET /_quota/fault/panic` panics in the Worker and `GET /_quota/fault/panic-do`
    /// in a Durable Object, so the tests see the isolate recover.
    pub panic: bool,
    /// `apply_fails`: a DO step that records an idempotency key fails after writing its
    /// counters, so the tests see the step's transaction undo them.
    pub apply_fails: bool,
}

/// Reads one variable at a time and collects what is wrong.
struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<SettingError>,
}

impl Reader<'_> {
    /// The value, `None` when unset or empty.
    fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var).filter(|v| !v.trim().is_empty())
    }

    fn fail<T>(&mut self, var: &'static str, reason: String, fallback: T) -> T {
        self.errors.push(SettingError { var, reason });
        fallback
    }

    /// A whole number in `range`, `default` when unset.
    fn number(&mut self, var: &'static str, range: std::ops::RangeInclusive<u64>, default: u64) -> u64 {
        let Some(v) = self.raw(var) else { return default };
        match v.trim().parse::<u64>() {
            Ok(n) if range.contains(&n) => n,
            _ => self.fail(
                var,
                format!("must be a whole number from {} to {} (got {:?})", range.start(), range.end(), v),
                default,
            ),
        }
    }

    /// A number of seconds in `range`, in ms.
    fn secs(&mut self, var: &'static str, range: std::ops::RangeInclusive<u64>, default: u64) -> u64 {
        self.number(var, range, default).saturating_mul(1000)
    }

    /// An `http` or `https` URL with a host.
    fn url(&mut self, var: &'static str) -> Option<String> {
        let v = self.raw(var)?;
        let v = v.trim().to_owned();
        let host = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://"));
        match host.map(|h| h.split(['/', '?', '#']).next().unwrap_or_default()) {
            Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Some(v),
            _ => self.fail(var, format!("must be an http:// or https:// URL with a host (got {v:?})"), None),
        }
    }

    /// A secret: never echoed, whatever is wrong with it.
    fn secret(&self, var: &str) -> Option<Secret> {
        self.raw(var).map(Secret::new)
    }

    /// A comma-separated list of secrets, current first (a signing secret during a rotation).
    /// The messages name entries by position, never by value.
    fn secrets(&mut self, var: &'static str) -> Option<Secrets> {
        let raw = self.raw(var)?;
        let list: Vec<&str> = raw.split(',').map(str::trim).collect();
        if let Some(n) = list.iter().position(|e| e.is_empty()) {
            let reason = format!("entry {} is empty (a list of secrets is comma separated, current first)", n + 1);
            return self.fail(var, reason, None);
        }
        if list.len() > MAX_SIGNING_SECRETS {
            let reason = format!("lists at most {MAX_SIGNING_SECRETS} secrets (got {})", list.len());
            return self.fail(var, reason, None);
        }
        for (i, e) in list.iter().enumerate() {
            if let Some(j) = list.iter().take(i).position(|p| p == e) {
                return self.fail(var, format!("entry {} repeats entry {}", i + 1, j + 1), None);
            }
        }
        Secrets::of(list.into_iter().map(Secret::new).collect())
    }

    /// `KEY_SECRETS` (`<version>:<secret>` entries, comma separated, current first) and
    /// `KEY_SECRET`, which is version 1 and comes last (the secret of every key minted before
    /// versions existed). Either alone is enough.
    fn key_secrets(&mut self) -> Option<KeySecrets> {
        const VAR: &str = "KEY_SECRETS";
        let mut list: Vec<(KeyVersion, Secret)> = Vec::new();
        if let Some(raw) = self.raw(VAR) {
            for (i, entry) in raw.split(',').map(str::trim).enumerate() {
                let n = i + 1;
                let Some((version, secret)) = entry.split_once(':').filter(|(_, s)| !s.trim().is_empty()) else {
                    return self.fail(VAR, format!("entry {n} must be <version>:<secret>"), None);
                };
                let Some(version) = KeyVersion::parse(version.trim()) else {
                    // Not echoed: what stands before the ':' may be part of a secret.
                    let reason = format!("entry {n}: the version must be a whole number from 1 to {}", KeyVersion::MAX);
                    return self.fail(VAR, reason, None);
                };
                if list.iter().any(|(v, _)| *v == version) {
                    return self.fail(VAR, format!("version {version} is listed twice"), None);
                }
                list.push((version, Secret::new(secret.trim())));
            }
        }
        if let Some(legacy) = self.secret("KEY_SECRET") {
            if list.iter().any(|(v, _)| *v == KeyVersion::FIRST) {
                let reason = "lists version 1, which KEY_SECRET also sets: give version 1 in one place".to_owned();
                return self.fail(VAR, reason, None);
            }
            list.push((KeyVersion::FIRST, legacy));
        }
        if list.len() > MAX_KEY_VERSIONS {
            let reason =
                format!("at most {MAX_KEY_VERSIONS} versions at once, KEY_SECRET included (got {})", list.len());
            return self.fail(VAR, reason, None);
        }
        KeySecrets::of(list)
    }
}

const FAULTS: &[&str] = &["do_unavailable", "panic", "apply_fails"];

impl Settings {
    /// Every setting from `get` (a variable or secret by name; `None` when unset).
    pub fn parse(get: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut r = Reader { get, errors: Vec::new() };
        let routes = match Routes::parse(&r.raw("ROUTES").unwrap_or_default()) {
            Ok(routes) => routes,
            // `Routes::parse` names the variable itself (`ROUTES[0].path: …`).
            Err(e) => {
                let reason = e.strip_prefix("ROUTES").map_or(e.as_str(), str::trim_start).to_owned();
                r.fail("ROUTES", reason, Routes::default())
            }
        };
        let faults: Vec<String> = r
            .raw("QUOTA_FAULTS")
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        if let Some(bad) = faults.iter().find(|f| !FAULTS.contains(&f.as_str())) {
            r.fail("QUOTA_FAULTS", format!("unknown fault {bad:?} (known: {})", FAULTS.join(", ")), ());
        }
        let decision_log = match r.raw("DECISION_LOG") {
            None => DecisionLog::All,
            Some(v) => match DecisionLog::named(v.trim()) {
                Some(d) => d,
                None => r.fail("DECISION_LOG", format!("must be all, refusals or off (got {v:?})"), DecisionLog::All),
            },
        };
        let clock_offset_ms = match r.raw("QUOTA_CLOCK_OFFSET_MS") {
            None => 0,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) => n,
                Err(_) => r.fail("QUOTA_CLOCK_OFFSET_MS", format!("must be a whole number of ms (got {v:?})"), 0),
            },
        };
        let reserved_header_prefixes = r
            .raw("RESERVED_HEADER_PREFIXES")
            .unwrap_or_default()
            .split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = reserved_header_prefixes
            .iter()
            .find(|p| !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            r.fail(
                "RESERVED_HEADER_PREFIXES",
                format!("{bad:?} is not a header name prefix (letters, digits, '-', '_')"),
                (),
            );
        }
        let alert_webhook_url = r.url("ALERT_WEBHOOK_URL");
        let webhook_secret = r.secrets("WEBHOOK_SECRET");
        if alert_webhook_url.is_some() && r.raw("WEBHOOK_SECRET").is_none() {
            r.fail(
                "WEBHOOK_SECRET",
                "is required when ALERT_WEBHOOK_URL is set: alerts are signed, never sent unsigned".to_owned(),
                (),
            );
        }
        let hourly = r.number("HOURLY_RETENTION_DAYS", MIN_HOURLY_RETENTION_DAYS..=3650, MIN_HOURLY_RETENTION_DAYS);
        Self {
            key_secrets: r.key_secrets(),
            origin_url: r.url("ORIGIN_URL"),
            origin_secret: r.secrets("ORIGIN_SECRET"),
            routes: Rc::new(routes),
            release_window_ms: r.secs("PROXY_RELEASE_WINDOW_SECS", 1..=3600, DEFAULT_RELEASE_WINDOW_SECS),
            refusal_memory_ms: r.number("REFUSAL_MEMORY_MS", 0..=recall::MAX_MEMORY_MS, recall::DEFAULT_MEMORY_MS),
            faults: Faults {
                do_unavailable: faults.iter().any(|f| f == "do_unavailable"),
                panic: faults.iter().any(|f| f == "panic"),
                apply_fails: faults.iter().any(|f| f == "apply_fails"),
            },
            decision_log,
            clock_offset_ms,
            metrics_flush_ms: r.secs("METRICS_FLUSH_SECS", 0..=3600, 10),
            admin_token: r.secret("ADMIN_TOKEN"),
            retention_days: r.number("RETENTION_DAYS", 1..=36_500, 400),
            hourly_retention_days: hourly,
            ledger_flush_ms: r.secs("LEDGER_FLUSH_SECS", 1..=300, DEFAULT_LEDGER_FLUSH_SECS),
            plan_refresh_ms: r.secs("PLAN_REFRESH_SECS", 1..=3600, DEFAULT_PLAN_REFRESH_SECS),
            report_every_ms: r.secs("ORG_REPORT_SECS", 1..=86_400, DEFAULT_ORG_REPORT_SECS),
            api_reads_per_minute: r.number("USAGE_API_READS_PER_MINUTE", 0..=1_000_000, 10),
            api_calls_per_minute: r.number("USAGE_API_CALLS_PER_MINUTE", 0..=1_000_000_000, 6_000),
            reconcile_autofix_pct: r.number("RECONCILE_AUTOFIX_PCT", 0..=100, 5),
            ledger_shards: u32::try_from(r.number("LEDGER_SHARDS", 1..=u64::from(MAX_LEDGER_SHARDS), 1)).unwrap_or(1),
            alert_webhook_url,
            alert_max_attempts: u32::try_from(r.number(
                "ALERT_MAX_ATTEMPTS",
                1..=20,
                u64::from(DEFAULT_ALERT_ATTEMPTS),
            ))
            .unwrap_or(DEFAULT_ALERT_ATTEMPTS),
            webhook_secret,
            stripe_api_base: r.url("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".to_owned()),
            stripe_secret_key: r.secret("STRIPE_SECRET_KEY"),
            debug_work: r.raw("QUOTA_DEBUG_WORK").is_some(),
            reserved_header_prefixes,
            errors: r.errors,
        }
    }

    /// The settings `need` depends on, if any is wrong: one message naming each bad variable
    /// and why, the same every time.
    pub fn check(&self, need: Need) -> Result<(), String> {
        let bad: Vec<String> =
            self.errors.iter().filter(|e| needed_by(e.var).contains(&need)).map(ToString::to_string).collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("the deployment is misconfigured: {}", bad.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Settings {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::parse(&move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    fn errors(vars: &[(&str, &str)]) -> Vec<String> {
        parse(vars).errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn nothing_set_is_every_default_and_no_error() {
        let s = parse(&[]);
        assert!(s.errors.is_empty());
        assert_eq!(
            (s.release_window_ms, s.ledger_shards, s.retention_days, s.hourly_retention_days),
            (120_000, 1, 400, 40)
        );
        assert_eq!((s.alert_max_attempts, s.reconcile_autofix_pct, s.metrics_flush_ms), (8, 5, 10_000));
        assert_eq!(s.stripe_api_base, "https://api.stripe.com");
        assert!(s.key_secrets.is_none() && s.webhook_secret.is_none() && s.faults == Faults::default());
        assert!(s.check(Need::Proxy).is_ok());
    }

    #[test]
    fn a_bad_value_is_an_exact_error_never_a_fallback() {
        // (variable, value, the one error it gives)
        let cases: &[(&str, &str, &str)] = &[
            ("LEDGER_SHARDS", "100", "LEDGER_SHARDS: must be a whole number from 1 to 64 (got \"100\")"),
            ("LEDGER_SHARDS", "0", "LEDGER_SHARDS: must be a whole number from 1 to 64 (got \"0\")"),
            (
                "PROXY_RELEASE_WINDOW_SECS",
                "-5",
                "PROXY_RELEASE_WINDOW_SECS: must be a whole number from 1 to 3600 (got \"-5\")",
            ),
            ("REFUSAL_MEMORY_MS", "60000", "REFUSAL_MEMORY_MS: must be a whole number from 0 to 10000 (got \"60000\")"),
            ("HOURLY_RETENTION_DAYS", "7", "HOURLY_RETENTION_DAYS: must be a whole number from 40 to 3650 (got \"7\")"),
            ("DECISION_LOG", "some", "DECISION_LOG: must be all, refusals or off (got \"some\")"),
            (
                "QUOTA_FAULTS",
                "panic,typo",
                "QUOTA_FAULTS: unknown fault \"typo\" (known: do_unavailable, panic, apply_fails)",
            ),
            (
                "ORIGIN_URL",
                "localhost:8788",
                "ORIGIN_URL: must be an http:// or https:// URL with a host (got \"localhost:8788\")",
            ),
            ("ROUTES", "{}", "ROUTES: must be a JSON array of rules"),
            ("KEY_SECRETS", "s3cr3t-value", "KEY_SECRETS: entry 1 must be <version>:<secret>"),
            ("KEY_SECRETS", "2:s3cr3t-value, 1:", "KEY_SECRETS: entry 2 must be <version>:<secret>"),
            (
                "KEY_SECRETS",
                "v2:s3cr3t-value",
                "KEY_SECRETS: entry 1: the version must be a whole number from 1 to 999",
            ),
            (
                "KEY_SECRETS",
                "1000:s3cr3t-value",
                "KEY_SECRETS: entry 1: the version must be a whole number from 1 to 999",
            ),
            ("KEY_SECRETS", "2:s3cr3t-value,2:other-value", "KEY_SECRETS: version 2 is listed twice"),
            (
                "KEY_SECRETS",
                "1:a,2:b,3:c,4:d,5:e,6:f,7:g,8:h,9:i",
                "KEY_SECRETS: at most 8 versions at once, KEY_SECRET included (got 9)",
            ),
            (
                "ORIGIN_SECRET",
                "s3cr3t-value,,older",
                "ORIGIN_SECRET: entry 2 is empty (a list of secrets is comma separated, current first)",
            ),
            ("ORIGIN_SECRET", "a,b,c,d,e", "ORIGIN_SECRET: lists at most 4 secrets (got 5)"),
            ("WEBHOOK_SECRET", "s3cr3t-value,s3cr3t-value", "WEBHOOK_SECRET: entry 2 repeats entry 1"),
            ("ROUTES", r#"[{"path": "a", "meter": "m"}]"#, "ROUTES[0].path: must start with '/'"),
            (
                "RESERVED_HEADER_PREFIXES",
                "x-internal-, bad prefix",
                "RESERVED_HEADER_PREFIXES: \"bad prefix\" is not a header name prefix (letters, digits, '-', '_')",
            ),
        ];
        for (var, value, error) in cases {
            assert_eq!(errors(&[(var, value)]), [*error], "{var}={value}");
        }
        assert_eq!(parse(&[("LEDGER_SHARDS", "100")]).ledger_shards, 1, "the field is a placeholder; the error stands");
    }

    #[test]
    fn alerts_without_their_secret_are_refused() {
        assert_eq!(
            errors(&[("ALERT_WEBHOOK_URL", "https://hooks.example.com/q")]),
            ["WEBHOOK_SECRET: is required when ALERT_WEBHOOK_URL is set: alerts are signed, never sent unsigned"]
        );
        assert!(errors(&[("ALERT_WEBHOOK_URL", "https://hooks.example.com/q"), ("WEBHOOK_SECRET", "s")]).is_empty());
    }

    #[test]
    fn secrets_are_never_echoed() {
        let s = parse(&[("KEY_SECRET", "k-very-secret"), ("ALERT_WEBHOOK_URL", "x")]);
        assert!(s.errors.iter().all(|e| !e.reason.contains("k-very-secret")));
        let (version, secret) = s.key_secrets.as_ref().unwrap().current();
        assert_eq!((version, secret.expose()), (KeyVersion::FIRST, &b"k-very-secret"[..]));
    }

    #[test]
    fn formatting_the_settings_shows_no_secret() {
        let secrets = [
            ("KEY_SECRETS", "3:ks-three-SECRET,2:ks-two-SECRET"),
            ("KEY_SECRET", "ks-one-SECRET"),
            ("ORIGIN_SECRET", "origin-new-SECRET,origin-old-SECRET"),
            ("WEBHOOK_SECRET", "hook-new-SECRET,hook-old-SECRET"),
            ("ADMIN_TOKEN", "admin-SECRET"),
            ("STRIPE_SECRET_KEY", "sk_test_SECRET"),
        ];
        let s = parse(&secrets);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let shown = format!("{s:?}\n{s:#?}");
        for (var, value) in secrets {
            for part in value.split(',') {
                let secret = part.split_once(':').map_or(part, |(_, v)| v);
                assert!(!shown.contains(secret), "{var}'s {secret} is in the settings' Debug:\n{shown}");
            }
        }
        assert!(shown.contains("[redacted]"));
        // Every secret is there, under its version, current first.
        let keys = s.key_secrets.as_ref().unwrap();
        let versions: Vec<u16> = keys.versions().iter().map(|v| v.get()).collect();
        assert_eq!(versions, [3, 2, 1]);
        assert_eq!(keys.get(KeyVersion::FIRST).map(Secret::expose), Some(&b"ks-one-SECRET"[..]));
        assert_eq!(s.origin_secret.as_ref().map(|o| o.iter().count()), Some(2));
        assert_eq!(s.webhook_secret.as_ref().map(|w| w.current().expose()), Some(&b"hook-new-SECRET"[..]));
        // A bad list names entries by position, never by value.
        let bad = parse(&[("KEY_SECRETS", "leaky:SECRET"), ("ORIGIN_SECRET", "SECRET,,SECRET")]);
        assert_eq!(bad.errors.len(), 2);
        assert!(
            bad.errors.iter().all(|e| !e.reason.contains("leaky") && !e.reason.contains("SECRET")),
            "{:?}",
            bad.errors
        );
    }

    #[test]
    fn version_one_is_key_secret_or_listed_never_both() {
        assert_eq!(
            errors(&[("KEY_SECRETS", "2:b,1:a"), ("KEY_SECRET", "a")]),
            ["KEY_SECRETS: lists version 1, which KEY_SECRET also sets: give version 1 in one place"]
        );
        let s = parse(&[("KEY_SECRETS", "5:e, 4:d")]);
        let versions: Vec<u16> = s.key_secrets.unwrap().versions().iter().map(|v| v.get()).collect();
        assert_eq!(versions, [5, 4]);
        assert!(parse(&[("KEY_SECRETS", "5:e")]).check(Need::Cron).is_ok());
        assert!(parse(&[("KEY_SECRETS", "e")]).check(Need::Proxy).is_err());
    }

    #[test]
    fn a_bad_setting_fails_only_what_needs_it() {
        let s = parse(&[("LEDGER_SHARDS", "100"), ("ROUTES", "[1]")]);
        let proxy = s.check(Need::Proxy).unwrap_err();
        assert!(proxy.contains("ROUTES") && !proxy.contains("LEDGER_SHARDS"), "{proxy}");
        let admin = s.check(Need::Admin).unwrap_err();
        assert_eq!(
            admin,
            "the deployment is misconfigured: LEDGER_SHARDS: must be a whole number from 1 to 64 (got \"100\")"
        );
        assert!(parse(&[("RETENTION_DAYS", "x")]).check(Need::Proxy).is_ok());
    }

    #[test]
    fn valid_values_are_taken() {
        let s = parse(&[
            ("LEDGER_SHARDS", "4"),
            ("QUOTA_FAULTS", "panic, do_unavailable"),
            ("DECISION_LOG", "refusals"),
            ("RESERVED_HEADER_PREFIXES", "X-Internal-,x-tenant-"),
            ("ORIGIN_URL", "http://127.0.0.1:8788"),
            ("QUOTA_CLOCK_OFFSET_MS", "-1000"),
        ]);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.ledger_shards, 4);
        assert!(s.faults.panic && s.faults.do_unavailable && !s.faults.apply_fails);
        assert_eq!(s.decision_log, DecisionLog::Refusals);
        assert_eq!(s.reserved_header_prefixes, ["x-internal-", "x-tenant-"]);
        assert_eq!(s.clock_offset_ms, -1000);
    }
}
