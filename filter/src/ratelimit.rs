//! Token-bucket rate limiting in shared data. (filled in below by the rate-limit work)

use crate::config::ConfigError;
use crate::decision::Deny;
use crate::expr::Activation;
use crate::ports::{Counters, SharedStore};
use crate::request::HostAttribute;
use serde::Deserialize;
use std::time::SystemTime;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub limits: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RateVerdict {
    Admit {
        response_headers: Vec<(String, String)>,
    },
    Limited(Deny),
}

#[derive(Debug)]
pub struct RateLimiter {}

impl RateLimiter {
    pub fn compile(config: &RateLimitConfig) -> Result<RateLimiter, ConfigError> {
        let _ = config;
        Ok(RateLimiter {})
    }
    pub fn host_attributes(&self) -> Vec<HostAttribute> {
        Vec::new()
    }
    pub fn check(
        &self,
        activation: &Activation<'_>,
        store: &dyn SharedStore,
        now: SystemTime,
        counters: &mut dyn Counters,
    ) -> RateVerdict {
        let _ = (activation, store, now, counters);
        RateVerdict::Admit {
            response_headers: Vec::new(),
        }
    }
}
