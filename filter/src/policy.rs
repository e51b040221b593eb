//! Authorization rules in CEL. STUB: interface fixed, implementation owned by the CEL work.

use crate::config::ConfigError;
use crate::expr::{Activation, ExprSource};
use crate::ports::Counters;
use crate::request::HostAttribute;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    #[default]
    Deny,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub when: Option<ExprSource>,
    #[serde(default)]
    pub allow: Option<ExprSource>,
    #[serde(default)]
    pub deny: Option<ExprSource>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What happens when no rule allows or denies.
    #[serde(default)]
    pub default_action: Action,
    #[serde(default)]
    pub mode: Mode,
}

/// The policy's verdict for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow {
        rule: Option<String>,
    },
    Deny {
        rule: Option<String>,
        reason: String,
    },
}

#[derive(Debug)]
pub struct Policy {
    default_action: Action,
}

impl Policy {
    pub fn compile(config: &PolicyConfig) -> Result<Policy, ConfigError> {
        Ok(Policy {
            default_action: config.default_action,
        })
    }

    pub fn host_attributes(&self) -> Vec<HostAttribute> {
        Vec::new()
    }

    /// Whether any rule reads `jwt.*`.
    pub fn uses_jwt(&self) -> bool {
        false
    }

    pub fn evaluate(&self, activation: &Activation<'_>, counters: &mut dyn Counters) -> Verdict {
        let _ = (activation, counters);
        match self.default_action {
            Action::Allow => Verdict::Allow { rule: None },
            Action::Deny => Verdict::Deny {
                rule: None,
                reason: "no rule allowed the request".into(),
            },
        }
    }
}
