//! Token-bucket rate limiting in proxy-wide shared data.
//!
//! Each limit owns `max_buckets` shared-data slots, `portcullis.rl.<limit>.<slot>`, so memory
//! is bounded by `limits × max_buckets × ~70 bytes` whatever the traffic. A key is hashed
//! (SipHash-1-3, never stored in clear) to a home slot, and its bucket lives in the first of
//! [`PROBES`] consecutive slots that holds it, else in the first one that is free: never
//! written, or holding another key's bucket that has refilled to full. A full bucket is as
//! good as absent (forgetting it changes no answer), so idle keys give their slot up by
//! arithmetic and a flood of one-off keys cannot crowd out a new, well-behaved one: each key
//! has a bucket of its own, identified by its 64-bit hash.
//!
//! When all of a key's probe slots hold *active* buckets of other keys, the bucket holding the
//! most tokens is forgotten and its slot taken: its key gets back at most what it had spent
//! (`portcullis.ratelimit.<limit>.evicted`). Only when every probe slot holds a key that is
//! being limited right now (less than one token: the table is truly full around the new key)
//! does that forget a limited key, which may then get up to its burst again
//! (`portcullis.ratelimit.<limit>.table_full`; raise `max_buckets` if it moves). A new key is
//! never charged to another key's bucket: a flood of keys, even keys spent to their limit,
//! cannot lock well-behaved clients out.
//!
//! Slots are never deleted, so a lookup stops at the first never-written slot: a key placed
//! further along found every slot before its own already written.
//!
//! Updates are compare-and-swap: read, compute, write with the read's CAS token, retry on a
//! mismatch, at most [`MAX_CAS_ATTEMPTS`] times. A request that passes every applicable
//! bucket takes one token from each; if any bucket refuses, none is taken (tokens already
//! taken in this attempt are refunded).
//!
//! A shared-data round trip (a `get` that returns data, then a `set`) is most of a check's
//! cost in Envoy, so a worker may take a small *batch* of tokens at once and spend the rest
//! locally ([`LocalTokens`]). A worker only takes tokens the bucket holds, so batching never
//! admits more than the bucket allows; the tokens workers hold unused are bounded by
//! `workers × batch` (auto: ≤ 0.1 % of the burst per worker) and forgotten after one period.

use crate::attributes::Attribute;
use crate::decision::{DenyReason, RateLimited, Refusal};
use crate::error::{valid_name, ConfigError};
use crate::expr::{Activation, Expr, ExprSource};
use crate::global::{DescriptorEntryConfig, Scope, ServiceConfig};
use crate::guard_index::GuardIndex;
use crate::metrics;
use crate::mode::Mode;
use crate::ports::{Counters, SharedStore, StoreError};
use serde::Deserialize;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::time::{SystemTime, UNIX_EPOCH};

/// Shared "next sweep due" time, so one VM per interval counts live buckets.
const SWEEP_KEY: &str = "portcullis.rl.sweep";
/// How often the live-bucket gauge is refreshed.
pub const SWEEP_INTERVAL_S: u64 = 10;

/// Consecutive slots a key's bucket may live in, from its home slot on.
pub const PROBES: u64 = 8;

/// How often a CAS update is retried before the request is refused (fail closed).
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// `batch` when not configured: burst / this, at most [`MAX_AUTO_BATCH`] (1 = no batching).
const AUTO_BATCH_DIVISOR: u32 = 1000;
/// The largest automatic batch: the shared round trip is already amortised to < 2 %.
pub const MAX_AUTO_BATCH: u32 = 64;
/// Most (limit, key) batches one worker holds; beyond it, expired batches are dropped, then all
/// (dropping only forgets tokens: never more permissive).
pub const MAX_LOCAL_BATCHES: usize = 4096;

/// Fixed point: one token is this many units, so refill is exact to the microtoken.
const UNIT: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Shared-data slots per limit (the memory bound).
    #[serde(default = "default_max_buckets")]
    pub max_buckets: u32,
    /// Also send `RateLimit`/`RateLimit-Policy` on admitted responses.
    #[serde(default)]
    pub headers_on_allow: bool,
    /// The rate-limit service that counts `scope: global` limits ([`crate::global`]).
    #[serde(default)]
    pub service: Option<ServiceConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            limits: Vec::new(),
            max_buckets: default_max_buckets(),
            headers_on_allow: false,
            service: None,
        }
    }
}

fn default_max_buckets() -> u32 {
    4096
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub name: String,
    #[serde(default)]
    pub when: Option<ExprSource>,
    /// CEL expression whose value (string, int, uint or bool) names the bucket (local limits).
    #[serde(default)]
    pub key: Option<ExprSource>,
    /// `global`: counted by `rate_limits.service` across proxies, keyed by `descriptors`.
    #[serde(default)]
    pub scope: Scope,
    /// Global limits: the descriptor's entries, values as CEL.
    #[serde(default)]
    pub descriptors: Vec<DescriptorEntryConfig>,
    /// Global limits: the hits one request counts (CEL: int, uint or a decimal string);
    /// default 1.
    #[serde(default)]
    pub hits_addend: Option<ExprSource>,
    /// Tokens added per `period_s`.
    pub requests: u32,
    pub period_s: u32,
    /// Bucket capacity; defaults to `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub on_key_error: KeyErrorAction,
    /// Tokens a worker takes from the shared bucket at once and then spends without a
    /// shared-data round trip. Default: `burst / 1000`, at most 64 (so small limits are exact);
    /// `1` makes every request a shared compare-and-swap.
    #[serde(default)]
    pub batch: Option<u32>,
}

/// What to do when the key expression fails (e.g. `jwt.claims.sub` without a token).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyErrorAction {
    /// All such requests share one bucket named `<unknown>`.
    #[default]
    UnknownBucket,
    /// The limit does not apply to the request.
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RateVerdict {
    Admit {
        response_headers: Vec<(String, String)>,
    },
    Limited(Refusal),
}

/// Counter names, formatted once at configure time.
#[derive(Debug)]
struct LimitCounters {
    admitted: String,
    limited: String,
    shadow_limited: String,
    errors: String,
    key_errors: String,
    live_buckets: String,
    evicted: String,
    table_full: String,
}

impl LimitCounters {
    fn new(name: &str) -> LimitCounters {
        let c = |what: &str| metrics::RATELIMIT.with(&[name, what]);
        let event = |what: &str| metrics::RATELIMIT_BUCKET_EVENTS.with(&[name, what]);
        LimitCounters {
            admitted: c("admitted"),
            limited: c("limited"),
            shadow_limited: c("shadow_limited"),
            errors: c("error"),
            key_errors: c("key_error"),
            live_buckets: metrics::RATELIMIT_LIVE_BUCKETS.with(&[name]),
            evicted: event("evicted"),
            table_full: event("table_full"),
        }
    }
}

#[derive(Debug)]
struct Limit {
    name: String,
    counters: LimitCounters,
    /// `portcullis.rl.<name>.`: the prefix of this limit's shared-data keys.
    store_prefix: String,
    when: Option<Expr>,
    key: Expr,
    requests: u32,
    period_s: u32,
    burst: u32,
    mode: Mode,
    on_key_error: KeyErrorAction,
    batch: u32,
}

impl Limit {
    fn period_nanos(&self) -> u128 {
        u128::from(self.period_s) * NANOS_PER_SEC
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    limits: Vec<Limit>,
    max_buckets: u32,
    headers_on_allow: bool,
    /// The limits whose `when` may hold for a request (see [`crate::guard_index`]).
    guards: GuardIndex,
}

/// One bucket's state as stored in shared data: 24 bytes, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    key_hash: u64,
    /// Micro-tokens.
    tokens: u64,
    /// Last update, nanoseconds since the epoch.
    updated: u64,
}

impl Bucket {
    fn decode(bytes: &[u8]) -> Option<Bucket> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
        };
        if bytes.len() != 24 {
            return None;
        }
        Some(Bucket {
            key_hash: word(0)?,
            tokens: word(8)?,
            updated: word(16)?,
        })
    }

    fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.key_hash.to_le_bytes());
        out[8..16].copy_from_slice(&self.tokens.to_le_bytes());
        out[16..].copy_from_slice(&self.updated.to_le_bytes());
        out
    }
}

/// A bucket resolved for this request.
struct Slot<'l> {
    /// The limit's position in the configuration (names its batches in [`LocalTokens`]).
    index: usize,
    limit: &'l Limit,
    /// The first of the limit's `max_buckets` shared-data entries that may hold the bucket.
    home: u64,
    key_hash: u64,
}

/// A bucket's shared-data entry, as [`RateLimiter::locate`] found it.
struct Located {
    store_key: String,
    /// The entry's CAS token; `None` if it was never written.
    cas: Option<u32>,
    /// What the entry holds for this key: `None` for a fresh bucket (a slot taken over).
    bucket: Option<Bucket>,
}

/// Where this attempt gets a slot's token from.
enum Source {
    /// This worker holds tokens of the bucket: no shared-data round trip.
    Local,
    /// The shared bucket after refill, before this request's tokens are taken.
    Shared {
        store_key: String,
        bucket: Bucket,
        cas: Option<u32>,
    },
}

/// One slot's state within an attempt.
struct Pending {
    source: Source,
    /// Tokens taken from the shared bucket (this request's and the batch), once written.
    taken: u32,
}

/// Tokens this worker took from shared buckets as part of a batch and has not spent yet.
/// Per VM (one per worker thread), reset when the configuration changes.
#[derive(Debug, Default)]
pub struct LocalTokens {
    batches: rustc_hash::FxHashMap<(usize, u64), LocalBatch>,
}

#[derive(Debug, Clone, Copy)]
struct LocalBatch {
    tokens: u32,
    /// Micro-tokens the shared bucket held once the batch was taken (for `RateLimit: r=`).
    shared_after: u64,
    /// Unspent tokens are forgotten after this (ns): a worker never banks tokens for longer
    /// than one period.
    expires: u64,
}

impl LocalTokens {
    fn has(&self, slot: &Slot<'_>, now: u64) -> bool {
        self.batches
            .get(&(slot.index, slot.key_hash))
            .is_some_and(|b| b.tokens > 0 && now < b.expires)
    }

    /// Spends one local token; returns the micro-tokens left (shared + local) for headers.
    fn spend(&mut self, slot: &Slot<'_>) -> u64 {
        let key = (slot.index, slot.key_hash);
        let Some(batch) = self.batches.get_mut(&key) else {
            return 0;
        };
        batch.tokens = batch.tokens.saturating_sub(1);
        let left = batch
            .shared_after
            .saturating_add(u64::from(batch.tokens).saturating_mul(UNIT as u64));
        if batch.tokens == 0 {
            self.batches.remove(&key);
        }
        left
    }

    fn keep(&mut self, slot: &Slot<'_>, batch: LocalBatch, now: u64) {
        if self.batches.len() >= MAX_LOCAL_BATCHES {
            self.batches.retain(|_, b| b.tokens > 0 && now < b.expires);
            if self.batches.len() >= MAX_LOCAL_BATCHES {
                self.batches.clear();
            }
        }
        self.batches.insert((slot.index, slot.key_hash), batch);
    }

    /// Unspent tokens this worker holds, over all limits and keys.
    pub fn held(&self) -> u64 {
        self.batches.values().map(|b| u64::from(b.tokens)).sum()
    }
}

fn capacity(limit: &Limit) -> u128 {
    u128::from(limit.burst) * UNIT
}

fn refill(limit: &Limit, stored: Option<Bucket>, key_hash: u64, now: u64) -> Bucket {
    let full = Bucket {
        key_hash,
        tokens: u64::try_from(capacity(limit)).unwrap_or(u64::MAX),
        updated: now,
    };
    let Some(stored) = stored else { return full };
    let elapsed = u128::from(now.saturating_sub(stored.updated));
    let added = elapsed
        .saturating_mul(u128::from(limit.requests))
        .saturating_mul(UNIT)
        .checked_div(limit.period_nanos())
        .unwrap_or(0);
    let tokens = (u128::from(stored.tokens) + added).min(capacity(limit));
    if stored.key_hash != key_hash && tokens == capacity(limit) {
        // Another key's bucket, idle long enough to be full: the slot is ours now.
        return full;
    }
    // A clock that went backwards keeps the stored time, so no tokens are minted.
    Bucket {
        key_hash: stored.key_hash,
        tokens: u64::try_from(tokens).unwrap_or(u64::MAX),
        updated: now.max(stored.updated),
    }
}

/// Nanoseconds until the bucket holds `target` micro-tokens.
fn nanos_until(limit: &Limit, tokens: u64, target: u128) -> u128 {
    let deficit = target.saturating_sub(u128::from(tokens));
    let rate = u128::from(limit.requests) * UNIT;
    if rate == 0 {
        return 0;
    }
    (deficit * limit.period_nanos()).div_ceil(rate)
}

fn ceil_secs(nanos: u128) -> u128 {
    nanos.div_ceil(NANOS_PER_SEC)
}

fn now_nanos(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The slot hash of a key: SipHash-1-3 under fixed keys, so every VM of the proxy (and every
/// build: the algorithm is specified, unlike std's `DefaultHasher`) maps a key to the same
/// slot. Only this 64-bit hash is stored, never the key. The hash has no secret, so a
/// cryptographic one would only cost more (docs/ratelimit.md, docs/benchmarks.md).
fn hash_key(limit: &str, key: &str) -> u64 {
    const K0: u64 = 0x706f_7274_6375_6c6c; // "portcull"
    const K1: u64 = 0x6973_2e72_6174_656c; // "is.ratel"
    let mut hasher = SipHasher13::new_with_keys(K0, K1);
    hasher.write(limit.as_bytes());
    hasher.write_u8(0);
    hasher.write(key.as_bytes());
    hasher.finish()
}

impl RateLimiter {
    pub fn compile(config: &RateLimitConfig) -> Result<RateLimiter, ConfigError> {
        if config.max_buckets == 0 {
            return Err(ConfigError::new(
                "rate_limits.max_buckets",
                "must be at least 1",
            ));
        }
        let mut limits = Vec::with_capacity(config.limits.len());
        for (i, limit) in config.limits.iter().enumerate() {
            let field = |name: &str| format!("rate_limits.limits[{i}].{name}");
            if !valid_name(&limit.name) {
                return Err(ConfigError::new(
                    field("name"),
                    "must be 1-64 characters of [A-Za-z0-9_-]",
                ));
            }
            if config
                .limits
                .iter()
                .take(i)
                .any(|other| other.name == limit.name)
            {
                return Err(ConfigError::new(
                    field("name"),
                    format!("duplicate limit name `{}`", limit.name),
                ));
            }
            if limit.requests == 0 {
                return Err(ConfigError::new(field("requests"), "must be at least 1"));
            }
            if limit.period_s == 0 {
                return Err(ConfigError::new(field("period_s"), "must be at least 1"));
            }
            let burst = limit.burst.unwrap_or(limit.requests);
            if burst == 0 {
                return Err(ConfigError::new(field("burst"), "must be at least 1"));
            }
            let when = match &limit.when {
                Some(source) => Some(
                    Expr::compile(source).map_err(|e| ConfigError::from_expr(field("when"), &e))?,
                ),
                None => None,
            };
            if limit.scope == Scope::Global {
                // Compiled by `GlobalLimiter`; what only a local limit has is refused here.
                for (set, name) in [
                    (limit.key.is_some(), "key"),
                    (limit.batch.is_some(), "batch"),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            field(name),
                            "not for a global limit (the service counts it; see `descriptors`)",
                        ));
                    }
                }
                continue;
            }
            for (set, name) in [
                (!limit.descriptors.is_empty(), "descriptors"),
                (limit.hits_addend.is_some(), "hits_addend"),
            ] {
                if set {
                    return Err(ConfigError::new(
                        field(name),
                        "only for a limit with `scope: global`",
                    ));
                }
            }
            let Some(key) = &limit.key else {
                return Err(ConfigError::new(field("key"), "a local limit needs a key"));
            };
            let key = Expr::compile(key).map_err(|e| ConfigError::from_expr(field("key"), &e))?;
            let batch = match limit.batch {
                None => (burst / AUTO_BATCH_DIVISOR).clamp(1, MAX_AUTO_BATCH),
                Some(batch) if (1..=burst).contains(&batch) => batch,
                Some(_) => {
                    return Err(ConfigError::new(
                        field("batch"),
                        format!("must be between 1 and the burst ({burst})"),
                    ))
                }
            };
            limits.push(Limit {
                name: limit.name.clone(),
                counters: LimitCounters::new(&limit.name),
                store_prefix: format!("portcullis.rl.{}.", limit.name),
                when,
                key,
                requests: limit.requests,
                period_s: limit.period_s,
                burst,
                mode: limit.mode,
                on_key_error: limit.on_key_error,
                batch,
            });
        }
        Ok(RateLimiter {
            guards: GuardIndex::build(limits.iter().map(|l| l.when.as_ref())),
            limits,
            max_buckets: config.max_buckets,
            headers_on_allow: config.headers_on_allow,
        })
    }

    pub fn host_attributes(&self) -> Vec<Attribute> {
        self.exprs().flat_map(Expr::host_attributes).collect()
    }

    /// Every compiled expression: guards and keys.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.limits
            .iter()
            .flat_map(|l| l.when.iter().chain(std::iter::once(&l.key)))
    }

    /// Whether this VM should run [`RateLimiter::sweep`] now: at most once per
    /// [`SWEEP_INTERVAL_S`] across the whole proxy (a CAS on a shared "next sweep" time).
    pub fn sweep_due(&self, store: &dyn SharedStore, now: SystemTime) -> bool {
        if self.limits.is_empty() {
            return false;
        }
        let now = now_nanos(now);
        let stored = store.get(SWEEP_KEY);
        let due = stored
            .as_ref()
            .and_then(|(bytes, _)| bytes.as_slice().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        if now < due {
            return false;
        }
        let next = now.saturating_add(SWEEP_INTERVAL_S * 1_000_000_000);
        store
            .set(SWEEP_KEY, &next.to_le_bytes(), stored.map(|(_, cas)| cas))
            .is_ok()
    }

    /// Counts the live buckets of every limit (those not yet refilled to full: a full bucket
    /// is as good as absent) and publishes `portcullis.ratelimit.<name>.live_buckets`.
    /// Reads `max_buckets` shared-data entries per limit; run it via [`RateLimiter::sweep_due`].
    pub fn sweep(
        &self,
        store: &dyn SharedStore,
        now: SystemTime,
        counters: &mut dyn Counters,
    ) -> Vec<u64> {
        let now = now_nanos(now);
        self.limits
            .iter()
            .map(|limit| {
                let live = (0..self.max_buckets)
                    .filter(|slot| {
                        let Some((bytes, _)) = store.get(&format!("{}{slot}", limit.store_prefix))
                        else {
                            return false;
                        };
                        let Some(bucket) = Bucket::decode(&bytes) else {
                            return false;
                        };
                        u128::from(refill(limit, Some(bucket), bucket.key_hash, now).tokens)
                            < capacity(limit)
                    })
                    .count() as u64;
                counters.set_gauge(&limit.counters.live_buckets, live);
                live
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Checks every applicable limit; takes one token from each only if all admit.
    pub fn check(
        &self,
        activation: &Activation<'_>,
        store: &dyn SharedStore,
        local: &mut LocalTokens,
        now: SystemTime,
        counters: &mut dyn Counters,
    ) -> RateVerdict {
        let slots: Vec<Slot<'_>> = self
            .guards
            .candidates(activation)
            .iter()
            .filter_map(|index| {
                let limit = self.limits.get(index)?;
                self.slot(index, limit, activation, counters)
            })
            .collect();
        self.check_slots(&slots, store, local, now, counters)
    }

    /// Checks the limits at these positions with these keys, as [`RateLimiter::check`] does
    /// with the keys it evaluates (the global limits' `local_fallback` buckets).
    pub fn check_keys(
        &self,
        keys: &[(usize, &str)],
        store: &dyn SharedStore,
        local: &mut LocalTokens,
        now: SystemTime,
        counters: &mut dyn Counters,
    ) -> RateVerdict {
        let slots: Vec<Slot<'_>> = keys
            .iter()
            .filter_map(|(index, key)| {
                let limit = self.limits.get(*index)?;
                let key_hash = hash_key(&limit.name, key);
                Some(Slot {
                    index: *index,
                    limit,
                    home: key_hash % u64::from(self.max_buckets),
                    key_hash,
                })
            })
            .collect();
        self.check_slots(&slots, store, local, now, counters)
    }

    fn check_slots(
        &self,
        slots: &[Slot<'_>],
        store: &dyn SharedStore,
        local: &mut LocalTokens,
        now: SystemTime,
        counters: &mut dyn Counters,
    ) -> RateVerdict {
        let now = now_nanos(now);
        if slots.is_empty() {
            return RateVerdict::Admit {
                response_headers: Vec::new(),
            };
        }
        for _ in 0..MAX_CAS_ATTEMPTS {
            match self.attempt(slots, store, local, now, counters) {
                Some(verdict) => return verdict,
                None => counters.increment(metrics::RATELIMIT_CAS_RETRIES.plain(), 1),
            }
        }
        // Persistent contention or a failing store: refuse rather than admit unmetered.
        counters.increment(metrics::RATELIMIT_CONTENTION_EXHAUSTED.plain(), 1);
        let limit = slots.first().map(|s| s.limit.name.clone());
        RateVerdict::Limited(Refusal::new(DenyReason::Busy, limit))
    }

    fn slot<'l>(
        &self,
        index: usize,
        limit: &'l Limit,
        activation: &Activation<'_>,
        counters: &mut dyn Counters,
    ) -> Option<Slot<'l>> {
        if let Some(when) = &limit.when {
            match when.eval_bool(activation) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(_) => counters.increment(&limit.counters.errors, 1),
            }
        }
        let key = match limit.key.eval_string(activation) {
            Ok(key) => key,
            Err(_) => {
                counters.increment(&limit.counters.key_errors, 1);
                match limit.on_key_error {
                    KeyErrorAction::Skip => return None,
                    KeyErrorAction::UnknownBucket => "<unknown>".to_owned(),
                }
            }
        };
        let key_hash = hash_key(&limit.name, &key);
        Some(Slot {
            index,
            limit,
            home: key_hash % u64::from(self.max_buckets),
            key_hash,
        })
    }

    /// Where `slot`'s bucket lives and what it holds: the key's own bucket, else the first
    /// free probe slot, else the probe slot whose bucket holds the most tokens (taken over:
    /// `bucket` is `None`).
    fn locate(
        &self,
        slot: &Slot<'_>,
        store: &dyn SharedStore,
        now: u64,
        counters: &mut dyn Counters,
    ) -> Located {
        let limit = slot.limit;
        let probes = PROBES.min(u64::from(self.max_buckets));
        let mut free: Option<Located> = None;
        let mut fullest: Option<(u64, Located)> = None;
        for i in 0..probes {
            let index = (slot.home + i) % u64::from(self.max_buckets);
            let store_key = format!("{}{index}", limit.store_prefix);
            let Some((bytes, cas)) = store.get(&store_key) else {
                return free.unwrap_or(Located {
                    store_key,
                    cas: None,
                    bucket: None,
                });
            };
            let tokens = match Bucket::decode(&bytes) {
                Some(b) if b.key_hash == slot.key_hash => {
                    return Located {
                        store_key,
                        cas: Some(cas),
                        bucket: Some(b),
                    }
                }
                Some(b) => refill(limit, Some(b), b.key_hash, now).tokens,
                None => u64::MAX,
            };
            if free.is_some() {
                continue;
            }
            let taken_over = Located {
                store_key,
                cas: Some(cas),
                bucket: None,
            };
            if u128::from(tokens) >= capacity(limit) {
                free = Some(taken_over);
            } else if fullest.as_ref().is_none_or(|(t, _)| tokens > *t) {
                fullest = Some((tokens, taken_over));
            }
        }
        if let Some(free) = free {
            return free;
        }
        let Some((tokens, taken_over)) = fullest else {
            // Only without any probe; a fresh home slot is the safe answer.
            return Located {
                store_key: format!("{}{}", limit.store_prefix, slot.home),
                cas: None,
                bucket: None,
            };
        };
        let counter = if tokens >= UNIT as u64 {
            &limit.counters.evicted
        } else {
            &limit.counters.table_full
        };
        counters.increment(counter, 1);
        taken_over
    }

    /// One optimistic pass over all slots. `None` means a CAS conflict: start again.
    fn attempt(
        &self,
        slots: &[Slot<'_>],
        store: &dyn SharedStore,
        local: &mut LocalTokens,
        now: u64,
        counters: &mut dyn Counters,
    ) -> Option<RateVerdict> {
        // One allocation per request for all the buckets' state (this runs on every request).
        let mut pending: Vec<Pending> = slots
            .iter()
            .map(|slot| {
                let source = if local.has(slot, now) {
                    Source::Local
                } else {
                    let Located {
                        store_key,
                        cas,
                        bucket,
                    } = self.locate(slot, store, now, counters);
                    Source::Shared {
                        store_key,
                        bucket: refill(slot.limit, bucket, slot.key_hash, now),
                        cas,
                    }
                };
                Pending { source, taken: 0 }
            })
            .collect();

        // Any enforcing bucket without a token refuses the request; nothing is taken.
        let mut refused: Option<(&Limit, u64)> = None;
        for (slot, p) in slots.iter().zip(&pending) {
            let Source::Shared { bucket, .. } = &p.source else {
                continue;
            };
            if u128::from(bucket.tokens) >= UNIT {
                continue;
            }
            let c = &slot.limit.counters;
            match slot.limit.mode {
                Mode::Shadow => counters.increment(&c.shadow_limited, 1),
                Mode::Enforce => {
                    counters.increment(&c.limited, 1);
                    refused = refused.or(Some((slot.limit, bucket.tokens)));
                }
            }
        }
        if let Some((limit, tokens)) = refused {
            return Some(RateVerdict::Limited(limited(limit, tokens)));
        }

        // Take this request's token, and up to `batch - 1` more for later requests, from every
        // shared bucket that has them; shadow buckets without a token are left alone.
        let mut conflict = false;
        for (slot, p) in slots.iter().zip(pending.iter_mut()) {
            let Source::Shared {
                store_key,
                bucket,
                cas,
            } = &p.source
            else {
                continue;
            };
            let whole = u64::try_from(u128::from(bucket.tokens) / UNIT).unwrap_or(u64::MAX);
            // A bucket's first write has no CAS token to guard it: two workers creating it at
            // once both succeed (see docs/ratelimit.md, "First write race"). Taking one token
            // there, not a batch, keeps that race at one extra request per worker.
            let batch = if cas.is_some() { slot.limit.batch } else { 1 };
            let take = u32::try_from(whole.min(u64::from(batch))).unwrap_or(1);
            if take == 0 {
                continue;
            }
            let next = Bucket {
                tokens: bucket
                    .tokens
                    .saturating_sub(u64::from(take).saturating_mul(UNIT as u64)),
                ..*bucket
            };
            match store.set(store_key, &next.encode(), *cas) {
                Ok(()) => p.taken = take,
                Err(StoreError::CasMismatch | StoreError::Unavailable) => {
                    conflict = true;
                    break;
                }
            }
        }
        if conflict {
            for (slot, p) in slots.iter().zip(&pending) {
                if let Source::Shared { store_key, .. } = &p.source {
                    if p.taken > 0 {
                        refund(slot.limit, store_key, p.taken, store);
                    }
                }
            }
            return None;
        }

        // Committed: spend local tokens, keep the rest of new batches.
        let mut response_headers = Vec::new();
        for (slot, p) in slots.iter().zip(&pending) {
            let left = match &p.source {
                Source::Local => local.spend(slot),
                Source::Shared { .. } if p.taken == 0 => continue,
                Source::Shared { bucket, .. } => {
                    let unit = UNIT as u64;
                    let shared_after = bucket
                        .tokens
                        .saturating_sub(u64::from(p.taken).saturating_mul(unit));
                    if p.taken > 1 {
                        let batch = LocalBatch {
                            tokens: p.taken - 1,
                            shared_after,
                            expires: now.saturating_add(
                                u64::try_from(slot.limit.period_nanos()).unwrap_or(u64::MAX),
                            ),
                        };
                        local.keep(slot, batch, now);
                    }
                    bucket.tokens.saturating_sub(unit)
                }
            };
            counters.increment(&slot.limit.counters.admitted, 1);
            if self.headers_on_allow {
                response_headers.extend(rate_limit_headers(slot.limit, left));
            }
        }
        Some(RateVerdict::Admit { response_headers })
    }
}

/// Gives back tokens taken earlier in a failed attempt (bounded CAS loop; adding commutes).
fn refund(limit: &Limit, store_key: &str, tokens: u32, store: &dyn SharedStore) {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some((bytes, cas)) = store.get(store_key) else {
            return;
        };
        let Some(bucket) = Bucket::decode(&bytes) else {
            return;
        };
        let back = u128::from(tokens) * UNIT;
        let next = Bucket {
            tokens: u64::try_from((u128::from(bucket.tokens) + back).min(capacity(limit)))
                .unwrap_or(u64::MAX),
            ..bucket
        };
        if store.set(store_key, &next.encode(), Some(cas)).is_ok() {
            return;
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured fields).
fn rate_limit_headers(limit: &Limit, tokens: u64) -> Vec<(String, String)> {
    let remaining = u128::from(tokens) / UNIT;
    let reset = ceil_secs(nanos_until(limit, tokens, capacity(limit)));
    vec![
        (
            "ratelimit-policy".into(),
            format!("\"{}\";q={};w={}", limit.name, limit.burst, limit.period_s),
        ),
        (
            "ratelimit".into(),
            format!("\"{}\";r={remaining};t={reset}", limit.name),
        ),
    ]
}

fn limited(limit: &Limit, tokens: u64) -> Refusal {
    let retry_after_s =
        u64::try_from(ceil_secs(nanos_until(limit, tokens, UNIT)).max(1)).unwrap_or(u64::MAX);
    let limited = RateLimited {
        limit: limit.name.clone(),
        requests: limit.requests,
        period_s: limit.period_s,
        retry_after_s,
        headers: rate_limit_headers(limit, tokens),
    };
    Refusal::new(DenyReason::RateLimited(limited), Some(limit.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::{MemoryCounters, MemoryStore};
    use crate::request::RequestView;
    use std::time::Duration;

    fn limiter(json: &str) -> RateLimiter {
        let config: RateLimitConfig = serde_json::from_str(json).unwrap();
        RateLimiter::compile(&config).unwrap()
    }

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_secs_f64(secs)
    }

    /// One request on a fresh worker: these tests are about the shared bucket.
    fn run(
        limiter: &RateLimiter,
        store: &MemoryStore,
        counters: &mut MemoryCounters,
        key: &str,
        t: f64,
    ) -> RateVerdict {
        run_on(
            limiter,
            store,
            &mut LocalTokens::default(),
            counters,
            key,
            t,
        )
    }

    fn admitted(v: &RateVerdict) -> bool {
        matches!(v, RateVerdict::Admit { .. })
    }

    const ONE: &str = r#"{"limits": [{"name": "per-key", "key": "request.headers['x-api-key']", "requests": 2, "period_s": 1, "burst": 5}]}"#;

    #[test]
    fn the_slot_hash_is_pinned() {
        // Every VM and every build must map a key to the same slot: a change of algorithm or
        // keys would silently split buckets across a rolling upgrade.
        assert_eq!(hash_key("per-user", "alice"), 7_851_557_194_442_058_947);
        assert_ne!(hash_key("per-user", "alice"), hash_key("per-user", "bob"));
        assert_ne!(hash_key("a", "bc"), hash_key("ab", "c"));
    }

    #[test]
    fn admits_exactly_burst_then_refills_exactly() {
        let limiter = limiter(ONE);
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let burst: usize = (0..10)
            .filter(|_| admitted(&run(&limiter, &store, &mut counters, "k", 0.0)))
            .count();
        assert_eq!(burst, 5);
        // 2 tokens per second: after 0.49 s still nothing, after 0.5 s exactly one.
        assert!(!admitted(&run(&limiter, &store, &mut counters, "k", 0.49)));
        assert!(admitted(&run(&limiter, &store, &mut counters, "k", 0.5)));
        assert!(!admitted(&run(&limiter, &store, &mut counters, "k", 0.5)));
        // Over 10 s, never more than the burst.
        let later: usize = (0..20)
            .filter(|_| admitted(&run(&limiter, &store, &mut counters, "k", 10.0)))
            .count();
        assert_eq!(later, 5);
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.per-key.result.admitted"),
            11
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.per-key.result.limited"),
            22
        );
    }

    #[test]
    fn keys_have_separate_buckets() {
        let limiter = limiter(ONE);
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        for _ in 0..5 {
            assert!(admitted(&run(&limiter, &store, &mut counters, "a", 0.0)));
        }
        assert!(!admitted(&run(&limiter, &store, &mut counters, "a", 0.0)));
        assert!(admitted(&run(&limiter, &store, &mut counters, "b", 0.0)));
    }

    #[test]
    fn limited_answer_has_retry_after_and_ratelimit_headers() {
        let limiter = limiter(ONE);
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let key = "secret-api-key-0123";
        for _ in 0..5 {
            run(&limiter, &store, &mut counters, key, 0.0);
        }
        let RateVerdict::Limited(deny) = run(&limiter, &store, &mut counters, key, 0.0) else {
            panic!("not limited")
        };
        let deny = deny.answer();
        assert_eq!(deny.status, 429);
        assert_eq!(deny.rule.as_deref(), Some("per-key"));
        let header = |name: &str| {
            deny.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("retry-after").as_deref(), Some("1"));
        assert_eq!(
            header("ratelimit-policy").as_deref(),
            Some("\"per-key\";q=5;w=1")
        );
        assert_eq!(header("ratelimit").as_deref(), Some("\"per-key\";r=0;t=3"));
        assert!(
            !deny.reason.contains(key),
            "the key value must not leak into the answer"
        );
        assert!(!deny.headers.iter().any(|(_, v)| v.contains(key)));
    }

    #[test]
    fn refused_request_takes_no_token_from_other_buckets() {
        let limiter = limiter(
            r#"{"limits": [
                {"name": "wide", "key": "'all'", "requests": 100, "period_s": 1},
                {"name": "narrow", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 60}
            ]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        assert!(admitted(&run(&limiter, &store, &mut counters, "k", 0.0)));
        for _ in 0..50 {
            assert!(!admitted(&run(&limiter, &store, &mut counters, "k", 0.0)));
        }
        // `wide` lost only the one admitted request's token: 99 more pass with fresh keys.
        let passed = (0..150)
            .filter(|i| {
                admitted(&run(
                    &limiter,
                    &store,
                    &mut counters,
                    &format!("other-{i}"),
                    0.0,
                ))
            })
            .count();
        assert_eq!(passed, 99);
    }

    #[test]
    fn shadow_limits_count_but_never_refuse() {
        let limiter = limiter(
            r#"{"limits": [{"name": "s", "key": "'x'", "requests": 1, "period_s": 60, "mode": "shadow"}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        for _ in 0..5 {
            assert!(admitted(&run(&limiter, &store, &mut counters, "k", 0.0)));
        }
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.s.result.shadow_limited"),
            4
        );
    }

    #[test]
    fn key_errors_use_the_unknown_bucket_or_skip() {
        let unknown = limiter(
            r#"{"limits": [{"name": "u", "key": "jwt.claims.sub", "requests": 1, "period_s": 60}]}"#,
        );
        let skip = limiter(
            r#"{"limits": [{"name": "u", "key": "jwt.claims.sub", "requests": 1, "period_s": 60, "on_key_error": "skip"}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        assert!(admitted(&run(&unknown, &store, &mut counters, "a", 0.0)));
        assert!(!admitted(&run(&unknown, &store, &mut counters, "b", 0.0)));
        let store = MemoryStore::default();
        for _ in 0..3 {
            assert!(admitted(&run(&skip, &store, &mut counters, "a", 0.0)));
        }
        assert!(counters.get("portcullis_ratelimit_total.limit.u.result.key_error") >= 5);
    }

    #[test]
    fn a_one_slot_table_forgets_the_other_key_and_reuses_idle_slots() {
        let limiter = limiter(
            r#"{"max_buckets": 1, "limits": [{"name": "c", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 10}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        assert!(admitted(&run(&limiter, &store, &mut counters, "a", 0.0)));
        assert!(!admitted(&run(&limiter, &store, &mut counters, "a", 0.5)));
        // One slot, `a` being limited: the table is truly full, `b` is not charged to `a`'s
        // bucket; `a` is forgotten (counted).
        assert!(admitted(&run(&limiter, &store, &mut counters, "b", 1.0)));
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.table_full"),
            1
        );
        assert!(!admitted(&run(&limiter, &store, &mut counters, "b", 1.5)));
        // Once `b`'s bucket is full again the slot is free: no counter moves.
        assert!(admitted(&run(&limiter, &store, &mut counters, "a", 12.0)));
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.table_full"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.evicted"),
            0
        );
    }

    #[test]
    fn a_flood_of_one_off_keys_does_not_limit_a_new_key() {
        // 100 000 distinct keys at 5 000 per second, each once, into 4 096 slots: a bucket
        // with one token taken is full again after 0.1 s, so ~500 are active at any time.
        let limiter = limiter(
            r#"{"limits": [{"name": "c", "key": "request.headers['x-api-key']", "requests": 10, "period_s": 1, "batch": 1}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        for i in 0..100_000u32 {
            let t = f64::from(i) / 5000.0;
            assert!(admitted(&run(
                &limiter,
                &store,
                &mut counters,
                &format!("flood-{i}"),
                t
            )));
        }
        let fresh = (0..20)
            .filter(|i| {
                admitted(&run(
                    &limiter,
                    &store,
                    &mut counters,
                    &format!("fresh-{i}"),
                    20.0,
                ))
            })
            .count();
        assert_eq!(fresh, 20);
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.table_full"),
            0
        );
        assert!(store.len() <= 4096, "memory stays bounded: {}", store.len());
    }

    #[test]
    fn a_limited_key_keeps_its_bucket_when_slots_before_it_free_up() {
        // Three slots: `a` and `b` fill the first two, so whichever of the others lands on a
        // taken home slot probes on. Freeing earlier slots must not hand it a fresh bucket.
        let limiter = limiter(
            r#"{"max_buckets": 3, "limits": [{"name": "c", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 100, "batch": 1}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        for key in ["a", "b", "c"] {
            assert!(admitted(&run(&limiter, &store, &mut counters, key, 0.0)));
        }
        // All three active: each meets its own empty bucket (three slots, three keys).
        for key in ["a", "b", "c"] {
            assert!(
                !admitted(&run(&limiter, &store, &mut counters, key, 1.0)),
                "{key}"
            );
        }
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.table_full"),
            0
        );
        // A fourth key finds every slot limiting its key: it gets a bucket of its own anyway.
        assert!(admitted(&run(&limiter, &store, &mut counters, "d", 1.0)));
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.table_full"),
            1
        );
    }

    #[test]
    fn a_full_table_forgets_the_fullest_bucket_first() {
        let limiter = limiter(
            r#"{"max_buckets": 2, "limits": [{"name": "c", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 100, "burst": 2, "batch": 1}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        // `a` spends one token of two, `b` both.
        assert!(admitted(&run(&limiter, &store, &mut counters, "a", 0.0)));
        assert!(admitted(&run(&limiter, &store, &mut counters, "b", 0.0)));
        assert!(admitted(&run(&limiter, &store, &mut counters, "b", 0.0)));
        // `c` takes `a`'s slot (the most tokens: `a` gets back one token at most), not `b`'s.
        assert!(admitted(&run(&limiter, &store, &mut counters, "c", 0.0)));
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.evicted"),
            1
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_bucket_events_total.limit.c.event.table_full"),
            0
        );
        assert!(!admitted(&run(&limiter, &store, &mut counters, "b", 0.0)));
    }

    #[test]
    fn a_key_is_found_past_a_freed_slot() {
        // Two slots; `x` has `y`'s home slot, so it lands in the second one, and stays limited
        // even once `y`'s bucket is full again and its slot free.
        let home = |k: &str| hash_key("c", k) % 2;
        let x = (0..100)
            .map(|i| format!("x{i}"))
            .find(|k| home(k) == home("y"))
            .unwrap();
        let x = x.as_str();
        let limiter = limiter(
            r#"{"max_buckets": 2, "limits": [{"name": "c", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 10, "batch": 1}]}"#,
        );
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        assert!(admitted(&run(&limiter, &store, &mut counters, "y", 0.0)));
        assert!(admitted(&run(&limiter, &store, &mut counters, x, 9.0)));
        // At 10.5 s `y` is full (free slot), `x` is not: both keys still meet their own state.
        assert!(!admitted(&run(&limiter, &store, &mut counters, x, 10.5)));
        assert!(admitted(&run(&limiter, &store, &mut counters, "y", 10.5)));
        assert!(!admitted(&run(&limiter, &store, &mut counters, x, 10.6)));
    }

    #[test]
    fn clock_going_backwards_mints_no_tokens() {
        let limiter = limiter(ONE);
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        for _ in 0..5 {
            run(&limiter, &store, &mut counters, "k", 5.0);
        }
        assert!(!admitted(&run(&limiter, &store, &mut counters, "k", 1.0)));
        assert!(!admitted(&run(&limiter, &store, &mut counters, "k", 5.0)));
    }

    /// A store whose CAS always fails at first: the limiter retries, then fails closed.
    struct Contended {
        inner: MemoryStore,
        failures: std::cell::Cell<usize>,
    }

    impl SharedStore for Contended {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.failures.get() > 0 {
                self.failures.set(self.failures.get() - 1);
                return Err(StoreError::CasMismatch);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn cas_conflicts_retry_a_bounded_number_of_times() {
        let limiter = limiter(ONE);
        let request = RequestView::new("GET", "/", &[("x-api-key", "k")]);
        let mut counters = MemoryCounters::default();
        let store = Contended {
            inner: MemoryStore::default(),
            failures: std::cell::Cell::new(3),
        };
        assert!(admitted(&limiter.check(
            &Activation::new(&request),
            &store,
            &mut LocalTokens::default(),
            at(0.0),
            &mut counters
        )));
        assert_eq!(counters.get("portcullis_ratelimit_cas_retries_total"), 3);
        let store = Contended {
            inner: MemoryStore::default(),
            failures: std::cell::Cell::new(usize::MAX),
        };
        assert!(!admitted(&limiter.check(
            &Activation::new(&request),
            &store,
            &mut LocalTokens::default(),
            at(0.0),
            &mut counters
        )));
        assert_eq!(
            counters.get("portcullis_ratelimit_contention_exhausted_total"),
            1
        );
    }

    #[test]
    fn live_buckets_are_counted_by_one_sweeper_per_interval() {
        let limiter = limiter(ONE);
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        for key in ["a", "b", "c"] {
            run(&limiter, &store, &mut counters, key, 0.0);
        }
        // Two VMs tick at the same moment: only one sweeps.
        assert!(limiter.sweep_due(&store, at(1.0)));
        assert!(!limiter.sweep_due(&store, at(1.0)));
        assert_eq!(limiter.sweep(&store, at(0.1), &mut counters), vec![3]);
        assert_eq!(
            counters.get("portcullis_ratelimit_live_buckets.limit.per-key"),
            3
        );
        // Half a token back per 0.25 s: full again (idle, expired) after 0.5 s.
        assert_eq!(limiter.sweep(&store, at(0.6), &mut counters), vec![0]);
        assert!(!limiter.sweep_due(&store, at(10.9)));
        assert!(limiter.sweep_due(&store, at(11.0)));
    }

    /// Counts the shared-data round trips.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        gets: std::cell::Cell<usize>,
    }

    impl SharedStore for Counting {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.gets.set(self.gets.get() + 1);
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    fn run_on(
        limiter: &RateLimiter,
        store: &dyn SharedStore,
        worker: &mut LocalTokens,
        counters: &mut MemoryCounters,
        key: &str,
        t: f64,
    ) -> RateVerdict {
        let request = RequestView::new("GET", "/", &[("x-api-key", key)]);
        let activation = Activation::new(&request);
        limiter.check(&activation, store, worker, at(t), counters)
    }

    /// 10 000 tokens, no refill to speak of: the automatic batch is 10.
    const BIG: &str = r#"{"limits": [{"name": "big", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 3600, "burst": 10000}]}"#;

    #[test]
    fn a_worker_spends_batches_locally_and_admits_exactly_the_burst() {
        let limiter = limiter(BIG);
        let store = Counting::default();
        let mut worker = LocalTokens::default();
        let mut counters = MemoryCounters::default();
        let admitted_count = (0..10_050)
            .filter(|_| {
                admitted(&run_on(
                    &limiter,
                    &store,
                    &mut worker,
                    &mut counters,
                    "k",
                    0.0,
                ))
            })
            .count();
        assert_eq!(admitted_count, 10_000);
        // One shared round trip per batch of 10 (the creating request takes one token alone),
        // + one per refused request.
        assert_eq!(store.gets.get(), 1 + 1_000 + 50);
        assert_eq!(worker.held(), 0);
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.big.result.admitted"),
            10_000
        );
        assert_eq!(
            counters.get("portcullis_ratelimit_total.limit.big.result.limited"),
            50
        );
    }

    #[test]
    fn a_new_bucket_is_created_with_one_token_taken_not_a_batch() {
        let limiter = limiter(BIG);
        let store = MemoryStore::default();
        let mut worker = LocalTokens::default();
        let mut counters = MemoryCounters::default();
        // The creating write is unguarded (no CAS token yet): it must not carry a batch.
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut worker,
            &mut counters,
            "k",
            0.0
        )));
        assert_eq!(worker.held(), 0);
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut worker,
            &mut counters,
            "k",
            0.0
        )));
        assert_eq!(worker.held(), 9);
    }

    #[test]
    fn interleaved_workers_together_admit_exactly_the_burst() {
        let limiter = limiter(BIG);
        let store = MemoryStore::default();
        let mut workers: Vec<LocalTokens> = (0..4).map(|_| LocalTokens::default()).collect();
        let mut counters = MemoryCounters::default();
        let mut admitted_count = 0;
        let mut refused_in_a_row = 0;
        // Uneven interleaving: worker i sends i + 1 requests per round.
        'rounds: for _ in 0..10_000 {
            for (i, worker) in workers.iter_mut().enumerate() {
                for _ in 0..=i {
                    if admitted(&run_on(&limiter, &store, worker, &mut counters, "k", 0.0)) {
                        admitted_count += 1;
                        refused_in_a_row = 0;
                    } else {
                        refused_in_a_row += 1;
                    }
                    // Held tokens are bounded by the batch, never more.
                    assert!(worker.held() < 10);
                    if refused_in_a_row > 20 {
                        break 'rounds;
                    }
                }
            }
        }
        // Every worker kept asking until refused, so every batched token was spent.
        assert_eq!(admitted_count, 10_000);
        assert!(workers.iter().all(|w| w.held() == 0));
    }

    #[test]
    fn a_refused_request_spends_no_local_token_of_another_limit() {
        let limiter = limiter(
            r#"{"limits": [
                {"name": "wide", "key": "'all'", "requests": 1, "period_s": 3600, "burst": 5000},
                {"name": "narrow", "key": "request.headers['x-api-key']", "requests": 1, "period_s": 60}
            ]}"#,
        );
        let store = MemoryStore::default();
        let mut worker = LocalTokens::default();
        let mut counters = MemoryCounters::default();
        // The first request creates the buckets (one token each), the next takes a batch.
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut worker,
            &mut counters,
            "first",
            0.0
        )));
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut worker,
            &mut counters,
            "k",
            0.0
        )));
        assert_eq!(worker.held(), 4, "wide took a batch of 5");
        for _ in 0..10 {
            assert!(!admitted(&run_on(
                &limiter,
                &store,
                &mut worker,
                &mut counters,
                "k",
                0.0
            )));
        }
        assert_eq!(
            worker.held(),
            4,
            "the narrow limit refused: wide's local tokens are kept"
        );
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut worker,
            &mut counters,
            "other",
            0.0
        )));
        assert_eq!(worker.held(), 3);
    }

    #[test]
    fn batches_are_forgotten_after_one_period_and_other_workers_see_the_rest() {
        let limiter = limiter(
            r#"{"limits": [{"name": "b", "key": "'k'", "requests": 10, "period_s": 1, "burst": 10, "batch": 5}]}"#,
        );
        let store = Counting::default();
        let (mut one, mut two) = (LocalTokens::default(), LocalTokens::default());
        let mut counters = MemoryCounters::default();
        // Creating the bucket takes one token; the next request takes a batch of 5.
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut one,
            &mut counters,
            "k",
            0.0
        )));
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut one,
            &mut counters,
            "k",
            0.0
        )));
        assert_eq!(one.held(), 4);
        // The other worker gets the 4 tokens left in the shared bucket, and no more.
        let two_admitted = (0..8)
            .filter(|_| admitted(&run_on(&limiter, &store, &mut two, &mut counters, "k", 0.0)))
            .count();
        assert_eq!(two_admitted, 4);
        // Worker one still spends its batch locally within the period…
        let gets = store.gets.get();
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut one,
            &mut counters,
            "k",
            0.5
        )));
        assert_eq!(store.gets.get(), gets);
        assert_eq!(one.held(), 3);
        // …but not after it: the batch is forgotten and the shared bucket asked again.
        assert!(admitted(&run_on(
            &limiter,
            &store,
            &mut one,
            &mut counters,
            "k",
            1.5
        )));
        assert_eq!(store.gets.get(), gets + 1);
        assert_eq!(one.held(), 4);
    }

    #[test]
    fn headers_count_the_tokens_a_worker_holds() {
        let limiter = limiter(
            r#"{"headers_on_allow": true, "limits": [{"name": "h", "key": "'k'", "requests": 10, "period_s": 10, "batch": 5}]}"#,
        );
        let store = MemoryStore::default();
        let mut worker = LocalTokens::default();
        let mut counters = MemoryCounters::default();
        let remaining = |v: RateVerdict| match v {
            RateVerdict::Admit { response_headers } => response_headers
                .into_iter()
                .find(|(k, _)| k == "ratelimit")
                .map(|(_, v)| v),
            RateVerdict::Limited(_) => None,
        };
        let first = run_on(&limiter, &store, &mut worker, &mut counters, "k", 0.0);
        assert_eq!(remaining(first).as_deref(), Some("\"h\";r=9;t=1"));
        let second = run_on(&limiter, &store, &mut worker, &mut counters, "k", 0.0);
        assert_eq!(remaining(second).as_deref(), Some("\"h\";r=8;t=2"));
    }

    #[test]
    fn the_local_batch_table_is_bounded() {
        let limiter = limiter(
            r#"{"max_buckets": 1000000, "limits": [{"name": "m", "key": "request.headers['x-api-key']", "requests": 10, "period_s": 1, "batch": 2}]}"#,
        );
        let store = MemoryStore::default();
        let mut worker = LocalTokens::default();
        let mut counters = MemoryCounters::default();
        for i in 0..MAX_LOCAL_BATCHES + 10 {
            let key = format!("key-{i}");
            assert!(
                admitted(&run_on(
                    &limiter,
                    &store,
                    &mut worker,
                    &mut counters,
                    &key,
                    0.0
                )),
                "{i}"
            );
        }
        assert!(worker.batches.len() <= MAX_LOCAL_BATCHES);
        assert!(worker.held() <= MAX_LOCAL_BATCHES as u64);
    }

    #[test]
    fn the_automatic_batch_follows_the_burst() {
        let batch = |json: &str| limiter(json).limits[0].batch;
        let with = |burst: u32| {
            format!(
                r#"{{"limits": [{{"name": "a", "key": "'k'", "requests": 1, "period_s": 1, "burst": {burst}}}]}}"#
            )
        };
        assert_eq!(batch(&with(1)), 1);
        assert_eq!(batch(&with(1999)), 1);
        assert_eq!(batch(&with(2000)), 2);
        assert_eq!(batch(&with(64_000)), 64);
        assert_eq!(batch(&with(4_000_000_000)), 64);
    }

    #[test]
    fn bad_limits_are_rejected_with_the_field() {
        let err = |json: &str| {
            RateLimiter::compile(&serde_json::from_str(json).unwrap())
                .unwrap_err()
                .field
        };
        assert_eq!(
            err(r#"{"limits": [{"name": "a", "key": "'k'", "requests": 0, "period_s": 1}]}"#),
            "rate_limits.limits[0].requests"
        );
        assert_eq!(
            err(r#"{"limits": [{"name": "a", "key": "'k'", "requests": 1, "period_s": 0}]}"#),
            "rate_limits.limits[0].period_s"
        );
        assert_eq!(
            err(
                r#"{"limits": [{"name": "a", "key": "'k'", "requests": 1, "period_s": 1}, {"name": "a", "key": "'k'", "requests": 1, "period_s": 1}]}"#
            ),
            "rate_limits.limits[1].name"
        );
        assert_eq!(
            err(r#"{"limits": [{"name": "a", "key": "(", "requests": 1, "period_s": 1}]}"#),
            "rate_limits.limits[0].key"
        );
        assert_eq!(
            err(
                r#"{"limits": [{"name": "a", "key": "'k'", "requests": 1, "period_s": 1, "batch": 0}]}"#
            ),
            "rate_limits.limits[0].batch"
        );
        assert_eq!(
            err(
                r#"{"limits": [{"name": "a", "key": "'k'", "requests": 5, "period_s": 1, "batch": 6}]}"#
            ),
            "rate_limits.limits[0].batch"
        );
    }
}
