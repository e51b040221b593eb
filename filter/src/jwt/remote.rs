//! Remote JWKS (and OIDC discovery) synchronisation: a pure state machine.
//!
//! The shell owns one [`JwksSync`] and one [`RemoteKeys`] per VM and drives them:
//! - `poll` on every tick (and, cheaply, right after a request came back `KeysPending`):
//!   it loads key sets that another VM published in shared data, and returns the HTTP
//!   callouts this VM must dispatch (at most one per provider, and, thanks to a CAS lease in
//!   shared data, at most one per provider per proxy);
//! - `on_response` when a callout answers (or fails / times out: `status = None`); it may
//!   return a follow-up callout (OIDC: discovery → `jwks_uri`);
//! - `take_notices` after either: one log line per change of a provider's fetch health
//!   (failing / recovered, with the reason), never one per request or per retry.
//!
//! Shared data layout (per provider):
//! - `portcullis.jwks.<provider>`: `"<fetched_at_unix_s>\n<JWKS JSON>"`, written by the VM
//!   that fetched; every VM parses it once per change (the CAS token tells).
//! - `portcullis.jwks.<provider>.lease`: `"<owner> <until_ms> <failures>"`. Owner `-` = free,
//!   with `until_ms` = earliest next attempt (the backoff); otherwise held by `owner` until
//!   `until_ms` (then considered abandoned). Taken with compare-and-swap.

use super::config::FetchTiming;
use super::keys::{KeyPolicy, KeySet};
use crate::metrics;
use crate::ports::{Counters, LogLevel, SharedStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nesting limit for fetched JWKS / discovery documents.
const MAX_REMOTE_DEPTH: usize = 16;
/// Largest JWKS / discovery body accepted.
pub const MAX_REMOTE_BYTES: usize = 512 * 1024;
/// Backoff after failed fetches: 1 s, 2 s, 4 s ... capped here (before jitter).
const MAX_BACKOFF_MS: u64 = 60_000;

/// One provider's key set as this VM currently has it.
#[derive(Debug, Clone)]
pub struct RemoteKeySet {
    pub keys: Arc<KeySet>,
    /// When it was fetched (by whichever VM), Unix seconds.
    pub fetched_at: i64,
    /// Changes whenever a new set is installed (invalidates cached tokens).
    pub generation: u64,
}

/// Per-VM: provider → last good remote key set. Fed by [`JwksSync`], read by authentication.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    sets: HashMap<String, RemoteKeySet>,
    /// Providers for which a token carried an unknown kid: an output of authentication,
    /// drained by [`JwksSync::poll`].
    refetch: Vec<String>,
    next_generation: u64,
}

impl RemoteKeys {
    pub fn get(&self, provider: &str) -> Option<&RemoteKeySet> {
        self.sets.get(provider)
    }

    pub fn install(&mut self, provider: &str, keys: KeySet, fetched_at: i64) {
        self.next_generation += 1;
        self.sets.insert(
            provider.to_owned(),
            RemoteKeySet {
                keys: Arc::new(keys),
                fetched_at,
                generation: self.next_generation,
            },
        );
    }

    /// Asks for a (throttled) refetch: a token named a kid this set does not have.
    pub fn request_refetch(&mut self, provider: &str) {
        if !self.refetch.iter().any(|p| p == provider) {
            self.refetch.push(provider.to_owned());
        }
    }

    pub fn take_refetch_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.refetch)
    }
}

/// Where a remote provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteKind {
    Jwks {
        path: String,
    },
    /// `path` is the discovery document (`<issuer path>/.well-known/openid-configuration`).
    Oidc {
        path: String,
        issuer: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub provider: String,
    pub cluster: String,
    pub authority: String,
    pub kind: RemoteKind,
    pub timing: FetchTiming,
}

/// An HTTP GET the shell must dispatch (`dispatch_http_call(cluster, [:method GET, :path,
/// :authority], timeout)`) and report back with [`JwksSync::on_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub provider: String,
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Discovery,
    Jwks,
}

#[derive(Debug)]
struct InFlight {
    stage: Stage,
    deadline_ms: u64,
}

#[derive(Debug)]
struct ProviderSync {
    spec: RemoteSpec,
    loaded_cas: Option<u32>,
    in_flight: Option<InFlight>,
    /// OIDC: (authority, path) of `jwks_uri`, once discovered.
    jwks_target: Option<(String, String)>,
    refetch_wanted: bool,
    data_key: String,
    lease_key: String,
    /// Identifies where the keys came from; a shared set fetched under another
    /// configuration (other cluster/path/authority) is ignored.
    source_tag: String,
}

/// The remote-JWKS state machine of one VM (see the module docs).
#[derive(Debug)]
pub struct JwksSync {
    /// Log lines not yet taken by the shell ([`JwksSync::take_notices`]).
    notices: Vec<(LogLevel, String)>,
    owner: String,
    rng: u64,
    providers: Vec<ProviderSync>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    owner: Option<String>,
    until_ms: u64,
    failures: u32,
}

impl Lease {
    fn parse(bytes: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let owner = parts.next()?;
        let until_ms = parts.next()?.parse().ok()?;
        let failures = parts.next()?.parse().ok()?;
        Some(Lease {
            owner: (owner != "-").then(|| owner.to_owned()),
            until_ms,
            failures,
        })
    }

    fn render(&self) -> String {
        format!(
            "{} {} {}",
            self.owner.as_deref().unwrap_or("-"),
            self.until_ms,
            self.failures
        )
    }
}

fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `https://host[:port]/path?q` → (`host[:port]`, `/path?q`).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Some((authority.to_owned(), path))
}

impl JwksSync {
    /// `owner`: an id unique to this VM within the proxy (e.g. root context id + a random
    /// number); `seed`: randomness for backoff jitter (e.g. the clock's nanoseconds).
    pub fn new(specs: Vec<RemoteSpec>, owner: &str, seed: u64) -> JwksSync {
        let owner: String = owner
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        JwksSync {
            notices: Vec::new(),
            owner: if owner.is_empty() { "vm".into() } else { owner },
            rng: seed | 1,
            providers: specs
                .into_iter()
                .map(|spec| ProviderSync {
                    data_key: format!("portcullis.jwks.{}", spec.provider),
                    source_tag: source_tag(&spec),
                    lease_key: format!("portcullis.jwks.{}.lease", spec.provider),
                    spec,
                    loaded_cas: None,
                    in_flight: None,
                    jwks_target: None,
                    refetch_wanted: false,
                })
                .collect(),
        }
    }

    /// Log lines about changes of fetch health since the last call, for the shell to log.
    pub fn take_notices(&mut self) -> Vec<(LogLevel, String)> {
        std::mem::take(&mut self.notices)
    }

    pub fn providers(&self) -> impl Iterator<Item = &RemoteSpec> {
        self.providers.iter().map(|p| &p.spec)
    }

    /// Whether a callout is outstanding for `provider`.
    pub fn in_flight(&self, provider: &str) -> bool {
        self.providers
            .iter()
            .any(|p| p.spec.provider == provider && p.in_flight.is_some())
    }

    fn jitter(&mut self, max: u64) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if max == 0 {
            0
        } else {
            self.rng % (max + 1)
        }
    }

    /// Asks for a refetch of `provider` (unknown kid); honoured at the next `poll`, at most
    /// once per `refetch_unknown_kid_min_interval_s` proxy-wide.
    pub fn request_refetch(&mut self, provider: &str, now: SystemTime) {
        let _ = now;
        if let Some(p) = self
            .providers
            .iter_mut()
            .find(|p| p.spec.provider == provider)
        {
            p.refetch_wanted = true;
        }
    }

    /// Loads newer shared key sets, and returns the callouts to dispatch now.
    pub fn poll(
        &mut self,
        now: SystemTime,
        store: &dyn SharedStore,
        keys: &mut RemoteKeys,
    ) -> Vec<FetchRequest> {
        let now_ms = unix_ms(now);
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        for provider in keys.take_refetch_requests() {
            self.request_refetch(&provider, now);
        }
        let mut out = Vec::new();
        for i in 0..self.providers.len() {
            let owner = self.owner.clone();
            let Some(p) = self.providers.get_mut(i) else {
                continue;
            };
            load_shared(p, store, keys);
            if let Some(f) = &p.in_flight {
                if now_ms <= f.deadline_ms {
                    continue;
                }
                // The shell never reported back: treat the callout as lost.
                p.in_flight = None;
            }
            let timing = p.spec.timing;
            let due = match keys.get(&p.spec.provider) {
                None => true,
                Some(set) => {
                    let age = now_s.saturating_sub(set.fetched_at).max(0) as u64;
                    // Refresh at 90% of cache_duration, before the keys go stale.
                    let refresh_after = timing.cache_duration_s.saturating_mul(9) / 10;
                    age >= refresh_after
                        || (p.refetch_wanted && age >= timing.refetch_unknown_kid_min_interval_s)
                }
            };
            if !due {
                continue;
            }
            let hold_ms = timing.timeout_ms.saturating_mul(2).saturating_add(5_000);
            if !acquire_lease(store, &p.lease_key, &owner, now_ms, hold_ms) {
                continue;
            }
            p.refetch_wanted = false;
            let (stage, authority, path) = match (&p.spec.kind, &p.jwks_target) {
                (RemoteKind::Jwks { path }, _) => {
                    (Stage::Jwks, p.spec.authority.clone(), path.clone())
                }
                (RemoteKind::Oidc { .. }, Some((authority, path))) => {
                    (Stage::Jwks, authority.clone(), path.clone())
                }
                (RemoteKind::Oidc { path, .. }, None) => {
                    (Stage::Discovery, p.spec.authority.clone(), path.clone())
                }
            };
            p.in_flight = Some(InFlight {
                stage,
                deadline_ms: now_ms.saturating_add(hold_ms),
            });
            out.push(FetchRequest {
                provider: p.spec.provider.clone(),
                cluster: p.spec.cluster.clone(),
                path,
                authority,
                timeout_ms: timing.timeout_ms,
            });
        }
        out
    }

    /// Reports the answer to a callout. `status = None`: the call failed or timed out.
    /// Bad answers (non-200, garbage, no usable key) count as failures: old keys are kept,
    /// the next attempt backs off exponentially (with jitter), proxy-wide.
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &mut self,
        provider: &str,
        status: Option<u16>,
        body: Option<&[u8]>,
        now: SystemTime,
        store: &dyn SharedStore,
        keys: &mut RemoteKeys,
        counters: &mut dyn Counters,
    ) -> Vec<FetchRequest> {
        let now_ms = unix_ms(now);
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let jitter = self.jitter(u64::MAX - 1);
        let owner = self.owner.clone();
        let Some(p) = self
            .providers
            .iter_mut()
            .find(|p| p.spec.provider == provider)
        else {
            return Vec::new();
        };
        let Some(in_flight) = p.in_flight.take() else {
            return Vec::new();
        };
        let body = body.filter(|b| b.len() <= MAX_REMOTE_BYTES);
        let result = match (status, body) {
            (Some(200), Some(body)) => match in_flight.stage {
                Stage::Discovery => discover(body, &p.spec).map(Step::Discovered),
                Stage::Jwks => KeySet::parse(body, KeyPolicy::Remote, MAX_REMOTE_DEPTH)
                    .map(|set| Step::Keys(set, body))
                    .map_err(|e| e.0),
            },
            (Some(status), _) => Err(format!("status {status}")),
            (None, _) => Err("callout failed".to_owned()),
        };
        match result {
            Ok(Step::Discovered((authority, path))) => {
                counters.increment(&metrics::JWKS_FETCHES.with(&[provider, "discovery_ok"]), 1);
                p.jwks_target = Some((authority.clone(), path.clone()));
                let hold_ms = p
                    .spec
                    .timing
                    .timeout_ms
                    .saturating_mul(2)
                    .saturating_add(5_000);
                p.in_flight = Some(InFlight {
                    stage: Stage::Jwks,
                    deadline_ms: now_ms.saturating_add(hold_ms),
                });
                vec![FetchRequest {
                    provider: provider.to_owned(),
                    cluster: p.spec.cluster.clone(),
                    path,
                    authority,
                    timeout_ms: p.spec.timing.timeout_ms,
                }]
            }
            Ok(Step::Keys(set, body)) => {
                counters.increment(&metrics::JWKS_FETCHES.with(&[provider, "ok"]), 1);
                let failed_before = store
                    .get(&p.lease_key)
                    .and_then(|(v, _)| Lease::parse(&v))
                    .is_some_and(|l| l.failures > 0);
                if failed_before {
                    self.notices.push((
                        LogLevel::Info,
                        format!("portcullis: JWKS of provider `{provider}` fetched again: keys available"),
                    ));
                }
                if !set.skipped.is_empty() {
                    counters.increment(
                        &metrics::JWKS_KEYS_SKIPPED.with(&[provider]),
                        set.skipped.len() as i64,
                    );
                }
                let mut envelope = format!("{now_s} {}\n", p.source_tag).into_bytes();
                envelope.extend_from_slice(body);
                if store.set(&p.data_key, &envelope, None).is_ok() {
                    p.loaded_cas = store.get(&p.data_key).map(|(_, cas)| cas);
                }
                keys.install(provider, set, now_s);
                counters.set_gauge(
                    &metrics::JWKS_KEYS.with(&[provider]),
                    keys.get(provider).map_or(0, |s| s.keys.keys.len() as u64),
                );
                release_lease(
                    store,
                    &p.lease_key,
                    &owner,
                    &Lease {
                        owner: None,
                        until_ms: 0,
                        failures: 0,
                    },
                );
                Vec::new()
            }
            Err(reason) => {
                counters.increment(&metrics::JWKS_FETCHES.with(&[provider, "failed"]), 1);
                // An OIDC provider may have moved its jwks_uri: rediscover next time.
                if in_flight.stage == Stage::Jwks {
                    p.jwks_target = None;
                }
                let current = store.get(&p.lease_key);
                let failures = current
                    .as_ref()
                    .and_then(|(v, _)| Lease::parse(v))
                    .map_or(0, |l| l.failures)
                    .saturating_add(1);
                if failures == 1 {
                    let consequence = if keys.get(provider).is_some() {
                        "keeping the keys fetched before"
                    } else {
                        "no keys yet: requests with its tokens get `keys_unavailable`"
                    };
                    self.notices.push((
                        LogLevel::Warn,
                        format!(
                            "portcullis: JWKS of provider `{provider}` unavailable ({reason}); {consequence}; retrying with backoff"
                        ),
                    ));
                }
                let base = 1000u64
                    .saturating_mul(1u64 << failures.saturating_sub(1).min(20))
                    .min(MAX_BACKOFF_MS);
                // Equal jitter: [base/2, base].
                let delay = base / 2 + jitter % (base / 2 + 1);
                release_lease(
                    store,
                    &p.lease_key,
                    &owner,
                    &Lease {
                        owner: None,
                        until_ms: now_ms.saturating_add(delay),
                        failures,
                    },
                );
                Vec::new()
            }
        }
    }
}

enum Step<'b> {
    Discovered((String, String)),
    Keys(KeySet, &'b [u8]),
}

fn discover(body: &[u8], spec: &RemoteSpec) -> Result<(String, String), String> {
    if !super::jws::json_depth_ok(body, MAX_REMOTE_DEPTH) {
        return Err("discovery document nests too deeply".into());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "discovery document is not JSON".to_owned())?;
    if let (RemoteKind::Oidc { issuer, .. }, Some(found)) =
        (&spec.kind, doc.get("issuer").and_then(|v| v.as_str()))
    {
        if found.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err("discovery issuer mismatch".into());
        }
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "no jwks_uri".to_owned())?;
    split_url(uri).ok_or_else(|| "bad jwks_uri".to_owned())
}

fn source_tag(spec: &RemoteSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let kind = match &spec.kind {
        RemoteKind::Jwks { path } => format!("jwks\0{path}"),
        RemoteKind::Oidc { path, issuer } => format!("oidc\0{path}\0{issuer}"),
    };
    h.update(format!("{}\0{}\0{kind}", spec.cluster, spec.authority).as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load_shared(p: &mut ProviderSync, store: &dyn SharedStore, keys: &mut RemoteKeys) {
    let Some((bytes, cas)) = store.get(&p.data_key) else {
        return;
    };
    if p.loaded_cas == Some(cas) {
        return;
    }
    p.loaded_cas = Some(cas);
    let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
        return;
    };
    let (head, rest) = bytes.split_at(newline);
    let Some((fetched_at, tag)) = std::str::from_utf8(head)
        .ok()
        .and_then(|s| s.split_once(' '))
        .and_then(|(t, tag)| Some((t.parse::<i64>().ok()?, tag)))
    else {
        return;
    };
    if tag != p.source_tag {
        return;
    }
    if keys
        .get(&p.spec.provider)
        .is_some_and(|s| s.fetched_at > fetched_at)
    {
        return;
    }
    let body = rest.get(1..).unwrap_or_default();
    if let Ok(set) = KeySet::parse(body, KeyPolicy::Remote, MAX_REMOTE_DEPTH) {
        keys.install(&p.spec.provider, set, fetched_at);
    }
}

/// Hands the lease back (free, with a backoff deadline) if this VM still holds it.
fn release_lease(store: &dyn SharedStore, key: &str, owner: &str, next: &Lease) {
    let cas = match store.get(key) {
        None => None,
        Some((bytes, cas)) => match Lease::parse(&bytes) {
            Some(Lease { owner: Some(o), .. }) if o == owner => Some(cas),
            // Someone else took over (ours was deemed abandoned): leave theirs alone.
            Some(_) => return,
            None => Some(cas),
        },
    };
    let _ = store.set(key, next.render().as_bytes(), cas);
}

/// Takes the provider's fetch lease if it is free (and out of backoff) or abandoned.
fn acquire_lease(
    store: &dyn SharedStore,
    key: &str,
    owner: &str,
    now_ms: u64,
    hold_ms: u64,
) -> bool {
    let current = store.get(key);
    let (failures, cas) = match &current {
        None => (0, None),
        Some((bytes, cas)) => match Lease::parse(bytes) {
            // Unreadable: take it over.
            None => (0, Some(*cas)),
            Some(lease) => {
                let free = match &lease.owner {
                    None => now_ms >= lease.until_ms,
                    Some(o) => o == owner || now_ms >= lease.until_ms,
                };
                if !free {
                    return false;
                }
                (lease.failures, Some(*cas))
            }
        },
    };
    let lease = Lease {
        owner: Some(owner.to_owned()),
        until_ms: now_ms.saturating_add(hold_ms),
        failures,
    };
    // Proxy-wasm cannot create a key atomically (CAS 0 = unconditional): when the lease
    // key is absent, two VMs racing on the very first poll may both fetch once.
    match store.set(key, lease.render().as_bytes(), cas) {
        Ok(()) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::{MemoryCounters, MemoryStore};
    use std::time::Duration;

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    const JWKS2: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn spec() -> RemoteSpec {
        RemoteSpec {
            provider: "p".into(),
            cluster: "jwks".into(),
            authority: "issuer.local".into(),
            kind: RemoteKind::Jwks {
                path: "/jwks.json".into(),
            },
            timing: FetchTiming {
                timeout_ms: 1000,
                cache_duration_s: 300,
                max_stale_s: 3600,
                refetch_unknown_kid_min_interval_s: 30,
            },
        }
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn one_fetcher_per_proxy_and_sharing() {
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let (mut a, mut b) = (
            JwksSync::new(vec![spec()], "vm1", 1),
            JwksSync::new(vec![spec()], "vm2", 2),
        );
        let (mut ka, mut kb) = (RemoteKeys::default(), RemoteKeys::default());
        let fa = a.poll(at(0), &store, &mut ka);
        let fb = b.poll(at(0), &store, &mut kb);
        assert_eq!(fa.len(), 1);
        assert_eq!(fa.first().map(|f| f.path.as_str()), Some("/jwks.json"));
        assert!(fb.is_empty(), "the lease keeps the second VM from fetching");
        // Polling again while in flight: nothing new.
        assert!(a.poll(at(1), &store, &mut ka).is_empty());
        assert!(a
            .on_response(
                "p",
                Some(200),
                Some(JWKS.as_bytes()),
                at(1),
                &store,
                &mut ka,
                &mut counters
            )
            .is_empty());
        assert_eq!(
            counters.get("portcullis_jwks_fetches_total.provider.p.result.ok"),
            1
        );
        assert!(ka.get("p").is_some());
        // The other VM picks the set up from shared data, without fetching.
        assert!(b.poll(at(2), &store, &mut kb).is_empty());
        assert_eq!(kb.get("p").map(|s| s.keys.keys.len()), Some(1));
        assert!(a.poll(at(100), &store, &mut ka).is_empty());
        assert!(b.poll(at(100), &store, &mut kb).is_empty());
        // Refresh at 90% of cache_duration: exactly one of them fetches.
        let fa = a.poll(at(271), &store, &mut ka);
        let fb = b.poll(at(271), &store, &mut kb);
        assert_eq!(fa.len() + fb.len(), 1);
        let (fetcher, fetcher_keys, other, other_keys) = if fa.is_empty() {
            (&mut b, &mut kb, &mut a, &mut ka)
        } else {
            (&mut a, &mut ka, &mut b, &mut kb)
        };
        fetcher.on_response(
            "p",
            Some(200),
            Some(JWKS2.as_bytes()),
            at(272),
            &store,
            fetcher_keys,
            &mut counters,
        );
        other.poll(at(273), &store, other_keys);
        let kid = |k: &RemoteKeys| {
            k.get("p")
                .and_then(|s| s.keys.keys.first().and_then(|k| k.kid.clone()))
        };
        assert_eq!(kid(fetcher_keys), Some("b".into()));
        assert_eq!(kid(other_keys), Some("b".into()));
    }

    #[test]
    fn failures_back_off_and_keep_old_keys() {
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let mut a = JwksSync::new(vec![spec()], "vm1", 7);
        let mut b = JwksSync::new(vec![spec()], "vm2", 8);
        let mut ka = RemoteKeys::default();
        let mut kb = RemoteKeys::default();
        assert_eq!(a.poll(at(0), &store, &mut ka).len(), 1);
        a.on_response(
            "p",
            Some(500),
            Some(b"oops"),
            at(0),
            &store,
            &mut ka,
            &mut counters,
        );
        assert_eq!(
            counters.get("portcullis_jwks_fetches_total.provider.p.result.failed"),
            1
        );
        // Backoff is proxy-wide: neither VM retries immediately.
        assert!(a.poll(at(0), &store, &mut ka).is_empty());
        assert!(b.poll(at(0), &store, &mut kb).is_empty());
        // After the first backoff (<= 1 s) someone retries.
        let retry = b.poll(at(2), &store, &mut kb);
        assert_eq!(retry.len(), 1);
        b.on_response(
            "p",
            Some(200),
            Some(b"not json"),
            at(2),
            &store,
            &mut kb,
            &mut counters,
        );
        b.on_response(
            "p",
            Some(200),
            Some(b"stale"),
            at(2),
            &store,
            &mut kb,
            &mut counters,
        );
        assert_eq!(
            counters.get("portcullis_jwks_fetches_total.provider.p.result.failed"),
            2,
            "unsolicited responses ignored"
        );
        // Second failure: backoff in [1 s, 2 s].
        assert!(b.poll(at(2), &store, &mut kb).is_empty());
        let retry = b.poll(at(5), &store, &mut kb);
        assert_eq!(retry.len(), 1);
        b.on_response(
            "p",
            Some(200),
            Some(JWKS.as_bytes()),
            at(5),
            &store,
            &mut kb,
            &mut counters,
        );
        assert!(kb.get("p").is_some());
        // A later failure keeps the old keys.
        let f = b.poll(at(300), &store, &mut kb);
        assert_eq!(f.len(), 1);
        b.on_response("p", None, None, at(300), &store, &mut kb, &mut counters);
        assert!(kb.get("p").is_some());
        // Lease was reset to 0 failures by the success: the backoff restarts at 1 s.
        let lease = store
            .get("portcullis.jwks.p.lease")
            .and_then(|(v, _)| Lease::parse(&v));
        assert_eq!(lease.map(|l| l.failures), Some(1));
    }

    #[test]
    fn unknown_kid_refetch_is_throttled() {
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let mut a = JwksSync::new(vec![spec()], "vm1", 3);
        let mut ka = RemoteKeys::default();
        assert_eq!(a.poll(at(0), &store, &mut ka).len(), 1);
        a.on_response(
            "p",
            Some(200),
            Some(JWKS.as_bytes()),
            at(0),
            &store,
            &mut ka,
            &mut counters,
        );
        ka.request_refetch("p");
        assert!(
            a.poll(at(10), &store, &mut ka).is_empty(),
            "within the min interval"
        );
        assert_eq!(
            a.poll(at(31), &store, &mut ka).len(),
            1,
            "request remembered until allowed"
        );
        a.on_response(
            "p",
            Some(200),
            Some(JWKS2.as_bytes()),
            at(31),
            &store,
            &mut ka,
            &mut counters,
        );
        assert!(
            a.poll(at(70), &store, &mut ka).is_empty(),
            "no request, no refetch"
        );
    }

    #[test]
    fn oidc_discovery_then_jwks() {
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let mut s = spec();
        s.kind = RemoteKind::Oidc {
            path: "/.well-known/openid-configuration".into(),
            issuer: "https://issuer.local".into(),
        };
        let mut a = JwksSync::new(vec![s], "vm1", 3);
        let mut ka = RemoteKeys::default();
        let f = a.poll(at(0), &store, &mut ka);
        assert_eq!(
            f.first().map(|f| f.path.as_str()),
            Some("/.well-known/openid-configuration")
        );
        let doc =
            br#"{"issuer":"https://issuer.local","jwks_uri":"https://keys.local:8443/certs?x=1"}"#;
        let next = a.on_response(
            "p",
            Some(200),
            Some(doc),
            at(0),
            &store,
            &mut ka,
            &mut counters,
        );
        assert_eq!(next.len(), 1);
        assert_eq!(
            next.first()
                .map(|f| (f.authority.as_str(), f.path.as_str())),
            Some(("keys.local:8443", "/certs?x=1"))
        );
        a.on_response(
            "p",
            Some(200),
            Some(JWKS.as_bytes()),
            at(0),
            &store,
            &mut ka,
            &mut counters,
        );
        assert!(ka.get("p").is_some());
        // Wrong issuer in discovery: failure.
        let mut s2 = spec();
        s2.kind = RemoteKind::Oidc {
            path: "/d".into(),
            issuer: "https://other".into(),
        };
        let mut b = JwksSync::new(vec![s2], "vm1", 3);
        let store2 = MemoryStore::default();
        let mut kb = RemoteKeys::default();
        assert_eq!(b.poll(at(0), &store2, &mut kb).len(), 1);
        assert!(b
            .on_response(
                "p",
                Some(200),
                Some(doc),
                at(0),
                &store2,
                &mut kb,
                &mut counters
            )
            .is_empty());
        assert_eq!(
            counters.get("portcullis_jwks_fetches_total.provider.p.result.failed"),
            1
        );
    }

    #[test]
    fn shared_keys_from_another_configuration_are_ignored() {
        let store = MemoryStore::default();
        let mut counters = MemoryCounters::default();
        let mut a = JwksSync::new(vec![spec()], "vm1", 1);
        let mut ka = RemoteKeys::default();
        a.poll(at(0), &store, &mut ka);
        a.on_response(
            "p",
            Some(200),
            Some(JWKS.as_bytes()),
            at(0),
            &store,
            &mut ka,
            &mut counters,
        );
        let mut other = spec();
        other.kind = RemoteKind::Jwks {
            path: "/other.json".into(),
        };
        let mut b = JwksSync::new(vec![other], "vm2", 2);
        let mut kb = RemoteKeys::default();
        let fetch = b.poll(at(1), &store, &mut kb);
        assert!(kb.get("p").is_none());
        assert_eq!(fetch.first().map(|f| f.path.as_str()), Some("/other.json"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://a.b/c"),
            Some(("a.b".into(), "/c".into()))
        );
        assert_eq!(split_url("https://a.b"), Some(("a.b".into(), "/".into())));
        assert_eq!(
            split_url("https://a.b?x"),
            Some(("a.b".into(), "/?x".into()))
        );
        assert_eq!(split_url("ftp://a.b/c"), None);
        assert_eq!(split_url("https:///c"), None);
    }
}
