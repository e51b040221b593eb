//! JWT authentication. STUB: interface fixed, implementation owned by the JWT work.

use crate::config::ConfigError;
use crate::decision::{Deny, HeaderEdit};
use crate::expr::{Activation, JwtAttributes};
use crate::ports::{Counters, HostCrypto};
use crate::request::HostAttribute;
use serde::Deserialize;
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    #[serde(default)]
    pub providers: Vec<serde_json::Value>,
    #[serde(default)]
    pub requirements: Vec<serde_json::Value>,
    #[serde(default)]
    pub default_requirement: Option<serde_json::Value>,
}

/// A token whose signature and claims were verified.
#[derive(Debug)]
pub struct VerifiedToken {
    pub provider: String,
    pub attributes: JwtAttributes,
}

/// Per-VM cache of verified tokens.
#[derive(Debug, Default)]
pub struct TokenCache {}

/// Signing keys fetched from remote JWKS endpoints, per provider (fed by the shell).
#[derive(Debug, Default)]
pub struct RemoteKeys {}

/// What authentication needs from the outside world for one request.
pub struct AuthnEnv<'a> {
    pub now: SystemTime,
    pub crypto: &'a dyn HostCrypto,
    pub remote_keys: &'a RemoteKeys,
    pub cache: &'a mut TokenCache,
    pub counters: &'a mut dyn Counters,
}

#[derive(Debug)]
pub enum AuthnOutcome {
    /// Authentication requirements are met. `token` is the verified token, if any.
    Pass {
        token: Option<Arc<VerifiedToken>>,
        request_headers: Vec<HeaderEdit>,
    },
    /// 401 (or 503 when keys are unavailable), with RFC 6750 headers.
    Fail(Deny),
    /// Keys for these providers have not been fetched yet.
    KeysPending(Vec<String>),
}

#[derive(Debug)]
pub struct Authenticator {}

impl Authenticator {
    pub fn compile(config: &JwtConfig) -> Result<Authenticator, ConfigError> {
        let _ = config;
        Ok(Authenticator {})
    }

    pub fn host_attributes(&self) -> Vec<HostAttribute> {
        Vec::new()
    }

    /// `activation` has no `jwt` yet; requirement `when` expressions are evaluated against it.
    pub fn authenticate(
        &self,
        activation: &Activation<'_>,
        env: &mut AuthnEnv<'_>,
    ) -> AuthnOutcome {
        let _ = (activation, env);
        AuthnOutcome::Pass {
            token: None,
            request_headers: Vec::new(),
        }
    }
}
