//! Policies at scale (issue 20): the per-request cost of a policy of 10 to 10 000
//! path-scoped rules ([`path_scoped_rules`]), for a request that no rule applies to and for
//! one that the last rule allows; the same rules with guards the index cannot use (the cost
//! of evaluating every guard); and the configure-time cost of compiling them.
//!
//! `cargo bench -p portcullis-benches --bench scaling [-- FILTER]`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis_benches::{compile, path_scoped_rules};
use portcullis_filter::expr::{Activation, JwtAttributes};
use portcullis_filter::policy::Verdict;
use portcullis_filter::ports::{NoCounters, NoLog};
use portcullis_filter::request::RequestView;
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;

fn policy_config(n: usize, indexable: bool) -> serde_json::Value {
    json!({"policy": {"default_action": "deny", "rules": path_scoped_rules(n, indexable)}})
}

fn token(team: usize) -> JwtAttributes {
    JwtAttributes::from_json(
        "local",
        &json!({"alg": "RS256"}),
        &json!({"sub": "alice", "groups": ["dev", format!("team-{team}")]}),
    )
}

fn request(path: &str) -> RequestView {
    RequestView::new(
        "GET",
        path,
        &[
            ("user-agent", "wrk"),
            ("accept", "*/*"),
            ("x-client-id", "load"),
        ],
    )
}

fn evaluation(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy at scale");
    let cases = [
        (10, true),
        (100, true),
        (1000, true),
        (10_000, true),
        (10, false),
        (100, false),
        (1000, false),
    ];
    for (n, indexable) in cases {
        let config = compile(&policy_config(n, indexable));
        let last = n - 1;
        let jwt = token(last % 10);
        let requests = [
            ("no match", request("/other/items?page=2"), None),
            (
                "last rule",
                request(&format!("/svc-{last}/items?page=2")),
                Some(format!("svc-{last}")),
            ),
        ];
        for (which, req, deciding) in &requests {
            let activation = Activation::new(req).with_jwt(Some(&jwt));
            let verdict = config
                .policy
                .evaluate(&activation, &mut NoCounters, &mut NoLog);
            match (deciding, &verdict) {
                (None, Verdict::Deny { rule: None, .. }) => {}
                (Some(d), Verdict::Allow { rule: Some(r) }) if d == r => {}
                _ => panic!("{n} rules, {which}: unexpected {verdict:?}"),
            }
            let label = if indexable { "indexed" } else { "every guard" };
            group.bench_with_input(
                BenchmarkId::new(format!("{label}, {which}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let activation = Activation::new(black_box(req)).with_jwt(Some(&jwt));
                        black_box(
                            config
                                .policy
                                .evaluate(&activation, &mut NoCounters, &mut NoLog),
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

/// The whole configure step (JSON to compiled configuration) for `n` rules: as generated
/// (ten distinct conditions, each compiled once and shared), and with every condition
/// distinct (`team-N`), so that every rule's two expressions are parsed.
fn configure(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy compile");
    group.sample_size(10);
    for n in [10, 100, 1000] {
        let shared = policy_config(n, true);
        let mut distinct = shared.clone();
        if let Some(rules) = distinct["policy"]["rules"].as_array_mut() {
            for (i, rule) in rules.iter_mut().enumerate() {
                rule["allow"] = json!(format!(
                    "request.method == \"GET\" && \"team-{i}\" in jwt.claims.groups"
                ));
            }
        }
        for (label, config) in [
            ("10 distinct conditions", shared),
            ("all distinct", distinct),
        ] {
            let text = config.to_string();
            group.bench_with_input(BenchmarkId::new(label, n), &text, |b, text| {
                b.iter(|| {
                    let compiled =
                        portcullis_filter::config::Config::from_json(black_box(text.as_bytes()));
                    assert!(compiled.is_ok());
                    black_box(compiled)
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = evaluation, configure
}
criterion_main!(benches);
