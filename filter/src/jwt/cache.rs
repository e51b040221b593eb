//! Per-VM cache of verified tokens.
//!
//! Key: a 128-bit keyed hash of (provider name, NUL, token) — never the token itself. Two
//! SipHash-1-3 passes under keys drawn at random per VM (std's `RandomState`, seeded by the
//! host's `random_get`): collisions can't be crafted without the keys, and accidental ones
//! are ~2⁻¹²⁸. (SHA-256 here cost ~12% of a cached request inside the wasm: no SHA
//! instructions there.) An entry lives
//! until the token's `exp` (plus the provider's clock skew), or `max_ttl_s` for tokens
//! without `exp`, and only while the provider's key set is the one that verified it.
//! Bounded by entries and bytes; the oldest entries go first. Only successes are cached.

use super::VerifiedToken;
use serde::Deserialize;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// 0 disables the cache.
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Lifetime of an entry for a token without `exp`.
    pub max_ttl_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 4096,
            max_bytes: 8 * 1024 * 1024,
            max_ttl_s: 300,
        }
    }
}

pub type CacheKey = [u8; 16];

pub fn cache_key(provider: &str, token: &str) -> CacheKey {
    static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let half = |state: &RandomState| {
        let mut h = state.build_hasher();
        h.write(provider.as_bytes());
        h.write_u8(0);
        h.write(token.as_bytes());
        h.finish().to_le_bytes()
    };
    let mut key = [0u8; 16];
    let (lo, hi) = key.split_at_mut(8);
    lo.copy_from_slice(&half(a));
    hi.copy_from_slice(&half(b));
    key
}

#[derive(Debug)]
struct Entry {
    token: Arc<VerifiedToken>,
    /// Unix seconds after which the entry is dead.
    expires_at: i64,
    /// The key-set generation that verified it.
    generation: u64,
    bytes: usize,
    seq: u64,
}

/// Per-VM cache of verified tokens (see the module docs).
#[derive(Debug, Default)]
pub struct TokenCache {
    config: CacheConfig,
    entries: HashMap<CacheKey, Entry>,
    /// Insertion order as (key, sequence); stale pairs (removed or re-inserted) are skipped.
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    seq: u64,
}

impl TokenCache {
    pub fn new(config: CacheConfig) -> TokenCache {
        TokenCache {
            config,
            ..TokenCache::default()
        }
    }

    pub fn configure(&mut self, config: CacheConfig) {
        if self.config != config {
            *self = TokenCache::new(config);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `false` when configured off (`max_entries: 0` or `max_bytes: 0`): callers then skip
    /// hashing the token at all.
    pub fn is_enabled(&self) -> bool {
        self.config.max_entries > 0 && self.config.max_bytes > 0
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&mut self, key: &CacheKey, now: i64, generation: u64) -> Option<Arc<VerifiedToken>> {
        let live = match self.entries.get(key) {
            None => return None,
            Some(e) => now < e.expires_at && e.generation == generation,
        };
        if live {
            self.entries.get(key).map(|e| Arc::clone(&e.token))
        } else {
            self.remove(key);
            None
        }
    }

    pub fn insert(
        &mut self,
        key: CacheKey,
        token: Arc<VerifiedToken>,
        expires_at: i64,
        generation: u64,
        bytes: usize,
        now: i64,
    ) {
        let max_entries = self.config.max_entries;
        if max_entries == 0 || bytes > self.config.max_bytes || expires_at <= now {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= max_entries || self.bytes + bytes > self.config.max_bytes {
            let Some((oldest, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.remove(&oldest);
            }
        }
        self.seq += 1;
        self.bytes += bytes;
        self.order.push_back((key, self.seq));
        self.entries.insert(
            key,
            Entry {
                token,
                expires_at,
                generation,
                bytes,
                seq: self.seq,
            },
        );
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(e.bytes);
        }
        // Keep the order queue from growing without bound when entries die by expiry.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    pub fn max_ttl_s(&self) -> u64 {
        self.config.max_ttl_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::JwtAttributes;

    fn token() -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            provider: "p".into(),
            attributes: JwtAttributes::from_json(
                "p",
                &serde_json::json!({}),
                &serde_json::json!({}),
            ),
            header_edits: Vec::new(),
            exp: None,
        })
    }

    #[test]
    fn bounded_and_expiring() {
        let mut c = TokenCache::new(CacheConfig {
            max_entries: 2,
            max_bytes: 100,
            max_ttl_s: 10,
        });
        let (a, b, d) = (
            cache_key("p", "a"),
            cache_key("p", "b"),
            cache_key("p", "d"),
        );
        assert_ne!(a, cache_key("q", "a"));
        c.insert(a, token(), 100, 0, 10, 0);
        c.insert(b, token(), 100, 0, 10, 0);
        c.insert(d, token(), 100, 0, 10, 0);
        assert_eq!(c.len(), 2);
        assert!(c.get(&a, 0, 0).is_none());
        assert!(c.get(&b, 0, 0).is_some());
        assert!(c.get(&b, 0, 1).is_none(), "other key generation");
        assert!(c.get(&d, 100, 0).is_none(), "expired");
        assert!(c.is_empty());
        c.insert(a, token(), 100, 0, 101, 0);
        assert!(c.is_empty(), "larger than max_bytes");
        c.insert(a, token(), 100, 0, 60, 0);
        c.insert(b, token(), 100, 0, 60, 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 60);
        for i in 0..1000 {
            c.insert(cache_key("p", &i.to_string()), token(), 100, 0, 1, 0);
        }
        assert!(c.order.len() <= 2 * c.len() + 64 + 1000);
    }
}
