//! The findings `portcullis lint` knows: stable ids (never reused), severities and why each
//! matters. docs/operations.md#lint-findings lists them; a test keeps the two in step.

use super::Severity;

#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    /// A short name (SARIF `name`).
    pub name: &'static str,
    pub severity: Severity,
    /// Why it matters, in one or two sentences.
    pub why: &'static str,
}

const fn rule(id: &'static str, name: &'static str, severity: Severity, why: &'static str) -> Rule {
    Rule {
        id,
        name,
        severity,
        why,
    }
}

use Severity::{Error, Note, Warning};

pub static CONFIG_REJECTED: Rule = rule(
    "PC000",
    "config-rejected",
    Error,
    "the filter rejects this configuration at load: Envoy refuses the plugin and the listener",
);
pub static DEFAULT_ALLOW: Rule = rule(
    "PC001",
    "default-allow",
    Warning,
    "`policy.default_action: allow` lets through every request no rule denies, including \
     paths nobody thought of; fail closed with `deny` and allow explicitly",
);
pub static POLICY_SHADOW: Rule = rule(
    "PC002",
    "policy-shadow",
    Warning,
    "a policy in shadow mode only counts and logs what it would deny: nothing is enforced",
);
pub static RULE_SHADOW: Rule = rule(
    "PC003",
    "rule-shadow",
    Warning,
    "a rule in shadow mode never decides; left there after its trial, it protects nothing",
);
pub static ALLOW_MISSING_NOT_PUBLIC: Rule = rule(
    "PC004",
    "allow-missing-not-public",
    Warning,
    "`allow_missing`/`allow_missing_or_failed` lets requests without a (valid) token through \
     authentication; on routes that are not public the policy alone stands between them and \
     the upstream",
);
pub static NO_AUDIENCES: Rule = rule(
    "PC005",
    "no-audiences",
    Warning,
    "without `audiences` a token the issuer minted for any other service is accepted here \
     (token substitution)",
);
pub static SHORT_HMAC_KEY: Rule = rule(
    "PC006",
    "short-hmac-key",
    Error,
    "an HMAC key shorter than the hash output (RFC 7518 §3.2: 32/48/64 bytes for HS256/384/512) \
     can be brute-forced offline from any token",
);
pub static LONG_CLOCK_SKEW: Rule = rule(
    "PC007",
    "long-clock-skew",
    Warning,
    "a clock skew above 300 s keeps expired tokens valid that much longer",
);
pub static NO_MAX_LIFETIME: Rule = rule(
    "PC008",
    "no-max-lifetime",
    Note,
    "without `max_lifetime_s` a token with a far-future `exp` (leaked, or minted by mistake) is \
     accepted until then",
);
pub static CLIENT_CHOSEN_KEY: Rule = rule(
    "PC009",
    "client-chosen-ratelimit-key",
    Warning,
    "a limit keyed on a request header for unauthenticated traffic lets a client pick its \
     bucket: a new value per request escapes the limit, and values aimed at the shared slot \
     hash evict other clients' buckets; key on the source address or a verified claim",
);
pub static NEVER_MATCHES: Rule = rule(
    "PC010",
    "never-matches",
    Warning,
    "this rule can never match: its condition or its `when` is the constant `false`",
);
pub static SHADOWED_RULE: Rule = rule(
    "PC011",
    "shadowed-rule",
    Warning,
    "an earlier rule of the same action already decides every request this one could: it is \
     dead code, and whoever edits it will be surprised",
);
pub static NOT_AT_REQUEST_TIME: Rule = rule(
    "PC012",
    "not-available-at-request-time",
    Error,
    "this attribute does not exist when the filter decides (request headers): responses, \
     upstream connections, body sizes and durations come later, and `jwt` is only known after \
     authentication",
);
pub static FAIL_OPEN: Rule = rule(
    "PC013",
    "fail-open",
    Error,
    "if the Wasm VM fails (a crash, an out-of-memory), the proxy lets every request through \
     unchecked; use FAIL_CLOSE / failOpen: false",
);
pub static JWKS_WITHOUT_TLS: Rule = rule(
    "PC014",
    "jwks-without-tls",
    Error,
    "keys fetched without TLS can be replaced in transit: whoever can do that can mint tokens \
     the filter accepts",
);
pub static SUPPRESSION_WITHOUT_REASON: Rule = rule(
    "PC015",
    "suppression-without-reason",
    Error,
    "a suppression must say why (`-- reason`), so a reviewer can judge it",
);
pub static UNUSED_SUPPRESSION: Rule = rule(
    "PC016",
    "unused-suppression",
    Warning,
    "this suppression matches no finding: the setting it excused is gone, or the id is wrong",
);

/// Every rule, by id.
pub static RULES: &[&Rule] = &[
    &CONFIG_REJECTED,
    &DEFAULT_ALLOW,
    &POLICY_SHADOW,
    &RULE_SHADOW,
    &ALLOW_MISSING_NOT_PUBLIC,
    &NO_AUDIENCES,
    &SHORT_HMAC_KEY,
    &LONG_CLOCK_SKEW,
    &NO_MAX_LIFETIME,
    &CLIENT_CHOSEN_KEY,
    &NEVER_MATCHES,
    &SHADOWED_RULE,
    &NOT_AT_REQUEST_TIME,
    &FAIL_OPEN,
    &JWKS_WITHOUT_TLS,
    &SUPPRESSION_WITHOUT_REASON,
    &UNUSED_SUPPRESSION,
];

/// The rule with this id.
pub fn by_id(id: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.id == id)
}
