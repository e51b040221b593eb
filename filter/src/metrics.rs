//! Every metric the filter emits, named in one place.
//!
//! A proxy-wasm metric has a flat name; Envoy prefixes it with `wasmcustom.` and, at
//! `/stats/prometheus`, strips that prefix again. Labels come from Envoy's tag extraction
//! (`stats_config.stats_tags`): each label is written into the flat name as
//! `.<label>.<value>` after the family name, in the family's label order, e.g.
//!
//! ```text
//! portcullis_rule_decisions_total.rule.admin-pages.decision.deny
//!   → portcullis_rule_decisions_total{rule="admin-pages",decision="deny"}
//! ```
//!
//! [`stats_tags`] derives one tag-extraction regex per label name from [`FAMILIES`]; the
//! shipped Envoy configurations carry exactly that list
//! (`envoy-examples/observability/stats_tags.yaml`, checked by a test here and by
//! `envoy-examples/validate_all.py`). Each regex is anchored on the family and the labels
//! before it, so a value can never be mistaken for a label name (names of rules, providers
//! and limits are `[A-Za-z0-9_-]`, never a dot: [`crate::error::valid_name`]).
//!
//! Names follow Prometheus conventions: counters end in `_total`, units are spelled out
//! (`_seconds`, `_microseconds`). A label left off (e.g. `reason` on a successful
//! authentication) is simply absent from the series.

/// What kind of proxy-wasm metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family: its Prometheus name, kind, labels (in the order they are written into
/// the flat name) and what it counts.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Family {
    /// The flat proxy-wasm name for these label values (fewer values than labels leaves the
    /// trailing labels off).
    pub fn with(&self, values: &[&str]) -> String {
        let mut name = String::from(self.name);
        for (label, value) in self.labels.iter().zip(values) {
            name.push('.');
            name.push_str(label);
            name.push('.');
            name.push_str(value);
        }
        name
    }

    /// The name without labels (families that have none).
    pub const fn plain(&self) -> &'static str {
        self.name
    }
}

const fn family(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Family {
    Family {
        name,
        kind,
        labels,
        help,
    }
}

/// Final decisions of requests that reached the policy: `allow` or `deny` (by policy).
pub const DECISIONS: Family = family(
    "portcullis_decisions_total",
    Kind::Counter,
    &["decision"],
    "requests decided by the policy; decision = allow | deny",
);
/// Per-rule verdicts.
pub const RULE_DECISIONS: Family = family(
    "portcullis_rule_decisions_total",
    Kind::Counter,
    &["rule", "decision"],
    "verdicts of each rule; decision = allow | deny | shadow_allow | shadow_deny | error",
);
/// Requests a whole policy in shadow mode would have denied.
pub const POLICY_SHADOW_DENIALS: Family = family(
    "portcullis_policy_shadow_denials_total",
    Kind::Counter,
    &[],
    "requests a policy in shadow mode would have denied",
);
/// Authentication outcomes per provider.
pub const JWT: Family = family(
    "portcullis_jwt_total",
    Kind::Counter,
    &["provider", "result", "reason"],
    "authentication outcomes; result = ok | missing | invalid | multiple_tokens | keys_pending | \
     keys_unavailable; reason (invalid only) = why the token was refused",
);
/// Token cache lookups per provider.
pub const JWT_CACHE: Family = family(
    "portcullis_jwt_cache_total",
    Kind::Counter,
    &["provider", "result"],
    "verified-token cache lookups; result = hit | miss",
);
/// Requirement selectors (`when`) that failed to evaluate.
pub const JWT_REQUIREMENT_ERRORS: Family = family(
    "portcullis_jwt_requirement_errors_total",
    Kind::Counter,
    &[],
    "requirement `when` expressions that failed to evaluate (the request gets the default)",
);
/// Requests answered 503 after waiting for keys.
pub const JWT_PENDING_TIMEOUTS: Family = family(
    "portcullis_jwt_pending_timeouts_total",
    Kind::Counter,
    &[],
    "requests answered 503 after waiting `pending_deadline_ms` for keys",
);
/// Remote JWKS fetches.
pub const JWKS_FETCHES: Family = family(
    "portcullis_jwks_fetches_total",
    Kind::Counter,
    &["provider", "result"],
    "remote JWKS fetches; result = ok | failed | discovery_ok",
);
/// Keys of a fetched JWKS the filter could not use.
pub const JWKS_KEYS_SKIPPED: Family = family(
    "portcullis_jwks_keys_skipped_total",
    Kind::Counter,
    &["provider"],
    "keys in fetched JWKS documents that were skipped (unsupported or malformed)",
);
/// Keys in use.
pub const JWKS_KEYS: Family = family(
    "portcullis_jwks_keys",
    Kind::Gauge,
    &["provider"],
    "keys in the provider's current JWKS",
);
/// Age of the keys in use.
pub const JWKS_KEY_AGE: Family = family(
    "portcullis_jwks_key_age_seconds",
    Kind::Gauge,
    &["provider"],
    "seconds since the keys in use were fetched (by any VM)",
);
/// Rate-limit outcomes per limit.
pub const RATELIMIT: Family = family(
    "portcullis_ratelimit_total",
    Kind::Counter,
    &["limit", "result"],
    "rate-limit checks; result = admitted | limited | shadow_limited | error | key_error",
);
/// Bucket table events per limit.
pub const RATELIMIT_BUCKET_EVENTS: Family = family(
    "portcullis_ratelimit_bucket_events_total",
    Kind::Counter,
    &["limit", "event"],
    "bucket table events; event = evicted | table_full",
);
/// Buckets not yet refilled to full.
pub const RATELIMIT_LIVE_BUCKETS: Family = family(
    "portcullis_ratelimit_live_buckets",
    Kind::Gauge,
    &["limit"],
    "buckets not yet refilled to full, refreshed every 10 s",
);
/// Compare-and-swap retries on the shared buckets.
pub const RATELIMIT_CAS_RETRIES: Family = family(
    "portcullis_ratelimit_cas_retries_total",
    Kind::Counter,
    &[],
    "compare-and-swap retries on shared rate-limit state",
);
/// Requests refused because the shared state stayed contended.
pub const RATELIMIT_CONTENTION_EXHAUSTED: Family = family(
    "portcullis_ratelimit_contention_exhausted_total",
    Kind::Counter,
    &[],
    "requests answered 429 because the shared state stayed contended",
);
/// Requests refused before any policy (docs/security.md).
pub const REQUESTS_REJECTED: Family = family(
    "portcullis_requests_rejected_total",
    Kind::Counter,
    &["reason"],
    "requests refused 400 before any policy; reason = a path violation (dot_segment, …) | \
     repeated_header | repeated_query_param",
);
/// Time the filter spent deciding a request (on the request path, in the VM).
pub const DECISION_DURATION: Family = family(
    "portcullis_decision_duration_microseconds",
    Kind::Histogram,
    &[],
    "time from request headers to the decision, in the filter (excludes waiting for keys)",
);
/// Calls to the global rate-limit service and what the failure mode did (one per request
/// that asks the service, whatever the number of global limits it checks).
pub const GLOBAL_RATELIMIT: Family = family(
    "portcullis_global_ratelimit_total",
    Kind::Counter,
    &["result"],
    "global rate-limit service checks; result = ok | over_limit | shadow_over_limit | error | \
     timeout | breaker_open | fail_open | fail_closed | fallback_admitted | fallback_limited",
);

/// 1 while the breaker to the service is open or half-open (per VM; the sum over VMs is the
/// number of VMs skipping the service).
pub const GLOBAL_RATELIMIT_BREAKER_OPEN: Family = family(
    "portcullis_global_ratelimit_breaker_open",
    Kind::Gauge,
    &[],
    "1 while the circuit breaker to the global rate-limit service is open (per VM, summed)",
);

// Fully labelled names used on the request path, spelled out so no request formats them
// (a test checks each against its family).
pub const DECISIONS_ALLOW: &str = "portcullis_decisions_total.decision.allow";
pub const GLOBAL_OK: &str = "portcullis_global_ratelimit_total.result.ok";
pub const GLOBAL_OVER_LIMIT: &str = "portcullis_global_ratelimit_total.result.over_limit";
pub const GLOBAL_SHADOW_OVER_LIMIT: &str =
    "portcullis_global_ratelimit_total.result.shadow_over_limit";
pub const GLOBAL_ERROR: &str = "portcullis_global_ratelimit_total.result.error";
pub const GLOBAL_TIMEOUT: &str = "portcullis_global_ratelimit_total.result.timeout";
pub const GLOBAL_BREAKER_OPEN: &str = "portcullis_global_ratelimit_total.result.breaker_open";
pub const GLOBAL_FAIL_OPEN: &str = "portcullis_global_ratelimit_total.result.fail_open";
pub const GLOBAL_FAIL_CLOSED: &str = "portcullis_global_ratelimit_total.result.fail_closed";
pub const GLOBAL_FALLBACK_ADMITTED: &str =
    "portcullis_global_ratelimit_total.result.fallback_admitted";
pub const GLOBAL_FALLBACK_LIMITED: &str =
    "portcullis_global_ratelimit_total.result.fallback_limited";
pub const DECISIONS_DENY: &str = "portcullis_decisions_total.decision.deny";
pub const REQUESTS_REJECTED_REPEATED_HEADER: &str =
    "portcullis_requests_rejected_total.reason.repeated_header";
pub const REQUESTS_REJECTED_REPEATED_QUERY_PARAM: &str =
    "portcullis_requests_rejected_total.reason.repeated_query_param";

/// Every family, for the stats configuration and the documentation.
pub const FAMILIES: &[&Family] = &[
    &DECISIONS,
    &RULE_DECISIONS,
    &POLICY_SHADOW_DENIALS,
    &JWT,
    &JWT_CACHE,
    &JWT_REQUIREMENT_ERRORS,
    &JWT_PENDING_TIMEOUTS,
    &JWKS_FETCHES,
    &JWKS_KEYS_SKIPPED,
    &JWKS_KEYS,
    &JWKS_KEY_AGE,
    &RATELIMIT,
    &RATELIMIT_BUCKET_EVENTS,
    &RATELIMIT_LIVE_BUCKETS,
    &RATELIMIT_CAS_RETRIES,
    &RATELIMIT_CONTENTION_EXHAUSTED,
    &REQUESTS_REJECTED,
    &DECISION_DURATION,
    &GLOBAL_RATELIMIT,
    &GLOBAL_RATELIMIT_BREAKER_OPEN,
];

/// Envoy `stats_config.stats_tags`: `(tag_name, regex)`, one per label name. Envoy allows a
/// tag name once, so a label shared by several families gets one regex with an alternative
/// per family. The first group is what Envoy removes from the name, the second the value.
pub fn stats_tags() -> Vec<(&'static str, String)> {
    let mut tags: Vec<(&'static str, Vec<String>)> = Vec::new();
    for family in FAMILIES {
        let mut prefix = family.name.to_owned();
        for label in family.labels {
            match tags.iter_mut().find(|(name, _)| name == label) {
                Some((_, alternatives)) => alternatives.push(prefix.clone()),
                None => tags.push((label, vec![prefix.clone()])),
            }
            prefix.push_str(&format!("\\.{label}\\.[^.]+"));
        }
    }
    tags.into_iter()
        .map(|(label, alternatives)| {
            let regex = format!(
                "^wasmcustom\\.(?:{})(\\.{label}\\.([^.]+))",
                alternatives.join("|")
            );
            (label, regex)
        })
        .collect()
}

/// [`stats_tags`] as the YAML list shipped in `envoy-examples/observability/stats_tags.yaml`.
pub fn stats_tags_yaml() -> String {
    let mut out = String::new();
    for (name, regex) in stats_tags() {
        out.push_str(&format!("- tag_name: {name}\n  regex: '{regex}'\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_names_carry_labels_in_order() {
        assert_eq!(
            RULE_DECISIONS.with(&["admin-pages", "deny"]),
            "portcullis_rule_decisions_total.rule.admin-pages.decision.deny"
        );
        assert_eq!(
            JWT.with(&["local", "ok"]),
            "portcullis_jwt_total.provider.local.result.ok"
        );
    }

    #[test]
    fn spelled_out_names_match_their_families() {
        assert_eq!(DECISIONS_ALLOW, DECISIONS.with(&["allow"]));
        assert_eq!(DECISIONS_DENY, DECISIONS.with(&["deny"]));
        for (name, result) in [
            (GLOBAL_OK, "ok"),
            (GLOBAL_OVER_LIMIT, "over_limit"),
            (GLOBAL_SHADOW_OVER_LIMIT, "shadow_over_limit"),
            (GLOBAL_ERROR, "error"),
            (GLOBAL_TIMEOUT, "timeout"),
            (GLOBAL_BREAKER_OPEN, "breaker_open"),
            (GLOBAL_FAIL_OPEN, "fail_open"),
            (GLOBAL_FAIL_CLOSED, "fail_closed"),
            (GLOBAL_FALLBACK_ADMITTED, "fallback_admitted"),
            (GLOBAL_FALLBACK_LIMITED, "fallback_limited"),
        ] {
            assert_eq!(name, GLOBAL_RATELIMIT.with(&[result]));
        }
        assert_eq!(
            REQUESTS_REJECTED_REPEATED_HEADER,
            REQUESTS_REJECTED.with(&["repeated_header"])
        );
        assert_eq!(
            REQUESTS_REJECTED_REPEATED_QUERY_PARAM,
            REQUESTS_REJECTED.with(&["repeated_query_param"])
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for family in FAMILIES {
            assert!(family.name.starts_with("portcullis_"), "{}", family.name);
            assert!(
                family
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                family.name
            );
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                family.name
            );
        }
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family is listed twice");
    }

    #[test]
    fn the_shipped_stats_tags_are_the_generated_ones() {
        let shipped = include_str!("../../envoy-examples/observability/stats_tags.yaml");
        let body: String = shipped
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            body,
            stats_tags_yaml(),
            "regenerate envoy-examples/observability/stats_tags.yaml from metrics::stats_tags_yaml()"
        );
    }

    #[test]
    fn a_label_regex_is_anchored_on_its_family() {
        let tags = stats_tags();
        let rule = tags.iter().find(|(n, _)| *n == "rule").map(|(_, r)| r);
        assert_eq!(
            rule.map(String::as_str),
            Some("^wasmcustom\\.(?:portcullis_rule_decisions_total)(\\.rule\\.([^.]+))")
        );
        let decision = tags.iter().find(|(n, _)| *n == "decision").map(|(_, r)| r);
        assert_eq!(
            decision.map(String::as_str),
            Some(
                "^wasmcustom\\.(?:portcullis_decisions_total|portcullis_rule_decisions_total\\.rule\\.[^.]+)(\\.decision\\.([^.]+))"
            )
        );
    }
}
