//! Per-VM cache of verified tokens.
//!
//! An entry holds the token it verified, and a hit needs the provider scope and the whole token
//! to be equal — so the entry's hash only picks where to look and needs no collision
//! resistance: a crafted collision is a miss, then a normal verification (and only verified
//! tokens are ever inserted). It hashes the scope, the token's length and its last 32 bytes
//! (the end of the signature: different for every token) with rustc-hash. Hashing runs on
//! every cached request, so it is the cheapest that does the job (what the alternatives cost:
//! docs/benchmarks.md), and the comparison goes 8 bytes at a time (see [`crate::bytes`]).
//! An entry lives
//! until the token's `exp` (plus the provider's clock skew), or `max_ttl_s` for tokens
//! without `exp`, and only while the provider's key set is the one that verified it.
//! Bounded by entries and bytes; the oldest entries go first. Only successes are cached.

use super::VerifiedToken;
use crate::bytes;
use rustc_hash::{FxHashMap, FxHasher};
use serde::Deserialize;
use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::Arc;

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

/// Which entry a (scope, token) pair would use; the entry then has to match it in full.
type CacheKey = u64;

fn cache_key(scope: &str, token: &str) -> CacheKey {
    let bytes = token.as_bytes();
    let tail = bytes.get(bytes.len().saturating_sub(32)..).unwrap_or(bytes);
    let mut h = FxHasher::default();
    h.write(scope.as_bytes());
    h.write_usize(bytes.len());
    h.write(tail);
    h.finish()
}

#[derive(Debug)]
struct Entry {
    /// What was verified: the provider's cache scope and the token, compared on every hit.
    scope: Box<str>,
    raw: Box<str>,
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
    entries: FxHashMap<CacheKey, Entry>,
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

    /// The verified token for exactly this `raw` token under this provider `scope`, if cached,
    /// unexpired, and verified with the key set `generation`.
    pub fn get(
        &mut self,
        scope: &str,
        raw: &str,
        now: i64,
        generation: u64,
    ) -> Option<Arc<VerifiedToken>> {
        let key = cache_key(scope, raw);
        let live = match self.entries.get(&key) {
            None => return None,
            // Another token under the same hash: a miss, and the entry stays.
            Some(e) if !bytes::equal(e.raw.as_bytes(), raw.as_bytes()) || *e.scope != *scope => {
                return None
            }
            Some(e) => now < e.expires_at && e.generation == generation,
        };
        if live {
            self.entries.get(&key).map(|e| Arc::clone(&e.token))
        } else {
            self.remove(&key);
            None
        }
    }

    /// Caches a verified token; `bytes` estimates its memory (the raw token is added).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        scope: &str,
        raw: &str,
        token: Arc<VerifiedToken>,
        expires_at: i64,
        generation: u64,
        bytes: usize,
        now: i64,
    ) {
        let max_entries = self.config.max_entries;
        let bytes = bytes.saturating_add(scope.len()).saturating_add(raw.len());
        if max_entries == 0 || bytes > self.config.max_bytes || expires_at <= now {
            return;
        }
        let key = cache_key(scope, raw);
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
                scope: scope.into(),
                raw: raw.into(),
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
        c.insert("p", "a", token(), 100, 0, 8, 0);
        c.insert("p", "b", token(), 100, 0, 8, 0);
        c.insert("p", "d", token(), 100, 0, 8, 0);
        assert_eq!(c.len(), 2);
        assert!(c.get("p", "a", 0, 0).is_none());
        assert!(c.get("p", "b", 0, 0).is_some());
        assert!(c.get("q", "b", 0, 0).is_none(), "other provider scope");
        assert!(c.get("p", "b", 0, 1).is_none(), "other key generation");
        assert!(c.get("p", "d", 100, 0).is_none(), "expired");
        assert!(c.is_empty());
        c.insert("p", "a", token(), 100, 0, 99, 0);
        assert!(
            c.is_empty(),
            "larger than max_bytes (with the token itself)"
        );
        c.insert("p", "a", token(), 100, 0, 58, 0);
        c.insert("p", "b", token(), 100, 0, 58, 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 60);
        for i in 0..1000 {
            c.insert("p", &i.to_string(), token(), 100, 0, 1, 0);
        }
        assert!(c.order.len() <= 2 * c.len() + 64 + 1000);
    }

    #[test]
    fn tokens_that_differ_before_the_hashed_tail_do_not_share_an_entry() {
        let mut c = TokenCache::new(CacheConfig::default());
        let tail = "s".repeat(40);
        let (real, forged) = (format!("h.alice.{tail}"), format!("h.admin.{tail}"));
        assert_eq!(cache_key("p", &real), cache_key("p", &forged));
        c.insert("p", &real, token(), 100, 0, 10, 0);
        assert!(c.get("p", &forged, 0, 0).is_none());
        assert!(c.get("p", &real, 0, 0).is_some());
    }

    #[test]
    fn a_hit_needs_the_whole_token_not_just_its_hash() {
        let mut c = TokenCache::new(CacheConfig::default());
        c.insert("p", "header.payload.sig", token(), 100, 0, 10, 0);
        // Plant a different token under the first one's hash, as a crafted collision would.
        let key = cache_key("p", "header.payload.sig");
        let planted = c.entries.remove(&key).unwrap();
        c.entries.insert(
            key,
            Entry {
                raw: "header.payload.forged".into(),
                ..planted
            },
        );
        assert!(c.get("p", "header.payload.sig", 0, 0).is_none());
        assert_eq!(c.len(), 1, "a mismatch is a miss, not an eviction");
        // Verifying the real token again replaces the entry, which then hits.
        c.insert("p", "header.payload.sig", token(), 100, 0, 10, 0);
        assert!(c.get("p", "header.payload.sig", 0, 0).is_some());
        assert_eq!(c.len(), 1);
    }
}
