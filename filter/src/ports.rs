//! The narrow ports through which the decision core touches the host. Each has a real
//! implementation in the proxy-wasm shell and an in-memory one for tests ([`memory`]).

/// Proxy-wide key/value store with compare-and-swap (proxy-wasm shared data): shared by all
/// worker VMs of one proxy.
pub trait SharedStore {
    /// The value and its CAS token, or `None` if the key was never set.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if `cas` is `None` or still the key's current token.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since it was read: read again and retry.
    CasMismatch,
    /// The host refused for another reason.
    Unavailable,
}

/// Signature verification offered by the host (Envoy's `verify_signature` foreign function).
pub trait HostCrypto {
    /// `Some(valid)` if the host verified, `None` if it can't (unknown function, unsupported
    /// algorithm, host error): the caller falls back to pure Rust.
    ///
    /// `hash` is `sha256`/`sha384`/`sha512`; `public_key_der` is a SubjectPublicKeyInfo;
    /// `signature` is PKCS#1 v1.5 for RSA and DER (not raw r||s) for ECDSA.
    fn verify_signature(
        &self,
        hash: &str,
        public_key_der: &[u8],
        signature: &[u8],
        message: &[u8],
    ) -> Option<bool>;
}

/// No host crypto: always fall back to pure Rust.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHostCrypto;

impl HostCrypto for NoHostCrypto {
    fn verify_signature(&self, _: &str, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
        None
    }
}

/// Counters (proxy-wasm metrics). Names are dotted, e.g. `portcullis.rule.admin.denied`.
pub trait Counters {
    fn increment(&mut self, name: &str, by: i64);
    /// Gauges (e.g. live buckets, key age).
    fn set_gauge(&mut self, name: &str, value: u64) {
        let _ = (name, value);
    }
}

/// Log lines about decisions (shadow verdicts, evaluation errors). Never passed a token,
/// a secret or a header value: only rule names and causes.
pub trait Log {
    fn log(&mut self, level: LogLevel, message: &str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

/// Discards every line.
#[derive(Debug, Default)]
pub struct NoLog;

impl Log for NoLog {
    fn log(&mut self, _: LogLevel, _: &str) {}
}

/// Discards every count.
#[derive(Debug, Default)]
pub struct NoCounters;

impl Counters for NoCounters {
    fn increment(&mut self, _: &str, _: i64) {}
}

/// In-memory implementations for tests and native tools.
pub mod memory {
    use super::{Counters, Log, LogLevel, SharedStore, StoreError};
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};

    #[derive(Debug, Default)]
    pub struct MemoryStore {
        entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    }

    impl MemoryStore {
        /// Entries stored (for memory-bound assertions).
        pub fn len(&self) -> usize {
            self.entries.borrow().len()
        }

        pub fn is_empty(&self) -> bool {
            self.entries.borrow().is_empty()
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.entries.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut entries = self.entries.borrow_mut();
            let current = entries.get(key).map(|(_, c)| *c);
            if let (Some(expected), Some(current)) = (cas, current) {
                if expected != current {
                    return Err(StoreError::CasMismatch);
                }
            }
            let next = current.unwrap_or(0).wrapping_add(1).max(1);
            entries.insert(key.to_owned(), (value.to_vec(), next));
            Ok(())
        }
    }

    /// Keeps every line, for assertions.
    #[derive(Debug, Default)]
    pub struct MemoryLog {
        pub lines: Vec<(LogLevel, String)>,
    }

    impl Log for MemoryLog {
        fn log(&mut self, level: LogLevel, message: &str) {
            self.lines.push((level, message.to_owned()));
        }
    }

    #[derive(Debug, Default)]
    pub struct MemoryCounters {
        pub values: BTreeMap<String, i64>,
    }

    impl MemoryCounters {
        pub fn get(&self, name: &str) -> i64 {
            self.values.get(name).copied().unwrap_or(0)
        }
    }

    impl Counters for MemoryCounters {
        fn increment(&mut self, name: &str, by: i64) {
            *self.values.entry(name.to_owned()).or_insert(0) += by;
        }
        fn set_gauge(&mut self, name: &str, value: u64) {
            self.values
                .insert(name.to_owned(), i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
}
