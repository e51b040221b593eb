//! Why a configuration is refused: the one error type every compile step returns, and the
//! naming rule shared by providers, rules and limits. A leaf module, so `config.rs` can
//! depend on the stages and the stages on it without a cycle.

use crate::expr::ExprError;
use std::fmt;

/// A rejected configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Path of the offending field, e.g. `policy.rules[2].allow`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn from_expr(field: impl Into<String>, error: &ExprError) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: format!("CEL error at {error}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: field `{}`: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Names of providers, rules and limits end up in counter names, filter state and response
/// bodies: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
