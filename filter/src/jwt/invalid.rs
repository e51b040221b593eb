//! Why a token was refused, by cause. The cause names the counter
//! (`portcullis.jwt.<provider>.invalid.<cause>`); the detail becomes `error_description`.

use std::fmt;

/// What was wrong with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    TooLarge,
    Malformed,
    AlgNone,
    AlgNotAllowed,
    UnsupportedAlg,
    UnknownKid,
    DuplicateMember,
    Expired,
    NotYetValid,
    LifetimeTooLong,
    MissingExp,
    WrongIssuer,
    WrongAudience,
    WrongSubject,
    UnsupportedCrit,
    NoMatchingKey,
    MissingClaim,
    KeyMismatch,
    IssuedInFuture,
    BadSignature,
    AmbiguousKid,
}

impl Cause {
    /// The counter suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::TooLarge => "too_large",
            Cause::Malformed => "malformed",
            Cause::AlgNone => "alg_none",
            Cause::AlgNotAllowed => "alg_not_allowed",
            Cause::UnsupportedAlg => "unsupported_alg",
            Cause::UnknownKid => "unknown_kid",
            Cause::DuplicateMember => "duplicate_member",
            Cause::Expired => "expired",
            Cause::NotYetValid => "not_yet_valid",
            Cause::LifetimeTooLong => "lifetime_too_long",
            Cause::MissingExp => "missing_exp",
            Cause::WrongIssuer => "wrong_issuer",
            Cause::WrongAudience => "wrong_audience",
            Cause::WrongSubject => "wrong_subject",
            Cause::UnsupportedCrit => "unsupported_crit",
            Cause::NoMatchingKey => "no_matching_key",
            Cause::MissingClaim => "missing_claim",
            Cause::KeyMismatch => "key_mismatch",
            Cause::IssuedInFuture => "issued_in_future",
            Cause::BadSignature => "bad_signature",
            Cause::AmbiguousKid => "ambiguous_kid",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token: the cause, and a description without any token content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: Cause,
    pub detail: String,
}

impl Invalid {
    pub fn new(code: Cause, detail: impl Into<String>) -> Invalid {
        Invalid {
            code,
            detail: detail.into(),
        }
    }
}
