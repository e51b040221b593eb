//! `portcullis lint`: every finding with a minimal configuration that triggers it and one
//! that does not; positions (YAML, `.cel` files, manifests); suppressions; the output formats;
//! exit statuses; and the shipped examples lint clean.

use portcullis_tools::lint::{self, Finding, Format, Options, Severity};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory with these files.
fn dir(files: &[(&str, &str)]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "portcullis-lint-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    for (name, text) in files {
        std::fs::write(d.join(name), text).unwrap();
    }
    d
}

fn lint_text(text: &str) -> Vec<Finding> {
    let d = dir(&[("config.yaml", text)]);
    lint::lint_file(&d.join("config.yaml")).unwrap()
}

fn ids(findings: &[Finding]) -> Vec<&'static str> {
    findings
        .iter()
        .filter(|f| f.suppressed.is_none())
        .map(|f| f.rule.id)
        .collect()
}

/// A configuration that triggers nothing: a provider with audiences and a max lifetime, a
/// token required everywhere, deny by default.
const CLEAN: &str = r#"
jwt:
  providers:
    - name: corp
      issuer: https://issuer.example.com
      audiences: [api]
      max_lifetime_s: 3600
      algorithms: [HS256]
      jwks: {inline: {keys: [{kty: oct, kid: k1, alg: HS256, k: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}}
  default_requirement: {provider: corp}
policy:
  default_action: deny
  rules:
    - name: readers
      allow: request.method == "GET"
rate_limits:
  limits:
    - {name: per-user, key: jwt.claims.sub, requests: 10, period_s: 1}
"#;

fn with(find: &str, replace: &str) -> String {
    assert!(CLEAN.contains(find), "{find}");
    CLEAN.replacen(find, replace, 1)
}

#[test]
fn the_clean_configuration_has_no_findings() {
    assert_eq!(ids(&lint_text(CLEAN)), Vec::<&str>::new());
}

#[test]
fn pc000_a_configuration_the_filter_rejects() {
    let f = lint_text(&with("allow: request.method", "alow: request.method"));
    assert_eq!(ids(&f), ["PC000"]);
    assert!(
        f[0].message.contains("unknown field `alow`"),
        "{}",
        f[0].message
    );
    assert_eq!(f[0].field, "policy.rules[0].alow");
}

#[test]
fn pc001_default_allow() {
    let f = lint_text(&with("default_action: deny", "default_action: allow"));
    assert_eq!(ids(&f), ["PC001"]);
    assert_eq!(f[0].field, "policy.default_action");
    let at = f[0].location.as_ref().unwrap();
    assert_eq!((at.line, at.column), (12, 3));
}

#[test]
fn pc002_policy_in_shadow_mode() {
    assert_eq!(
        ids(&lint_text(&with(
            "default_action: deny",
            "default_action: deny\n  mode: shadow"
        ))),
        ["PC002"]
    );
    assert_eq!(
        ids(&lint_text(&with(
            "default_action: deny",
            "default_action: deny\n  mode: enforce"
        ))),
        Vec::<&str>::new()
    );
}

#[test]
fn pc003_rule_in_shadow_mode() {
    let f = lint_text(&with(
        "- name: readers",
        "- name: readers\n      mode: shadow",
    ));
    assert_eq!(ids(&f), ["PC003"]);
    assert!(f[0].message.contains("`readers`"));
    assert_eq!(f[0].field, "policy.rules[0].mode");
}

#[test]
fn pc004_allow_missing_on_routes_not_obviously_public() {
    let requirement = |when: &str, require: &str| {
        with(
            "  default_requirement:",
            &format!("  requirements:\n    - {{name: r, when: '{when}', require: {{{require}: {{}}}}}}\n  default_requirement:"),
        )
    };
    let f = lint_text(&requirement(
        r#"request.url_path.startsWith("/orders")"#,
        "allow_missing",
    ));
    assert_eq!(ids(&f), ["PC004"]);
    assert!(f[0]
        .message
        .contains("requirement `r` uses `allow_missing`"));
    assert_eq!(
        ids(&lint_text(&requirement("true", "allow_missing_or_failed"))),
        ["PC004"]
    );
    // Public-looking routes are what allow_missing is for.
    assert_eq!(
        ids(&lint_text(&requirement(
            r#"request.url_path.startsWith("/public/") || request.url_path == "/healthz""#,
            "allow_missing"
        ))),
        Vec::<&str>::new()
    );
    // The default requirement covers every other route: always a finding.
    assert_eq!(
        ids(&lint_text(&with(
            "default_requirement: {provider: corp}",
            "default_requirement: {allow_missing: {}}"
        ))),
        ["PC004"]
    );
}

#[test]
fn pc005_provider_without_audiences() {
    let f = lint_text(&with("      audiences: [api]\n", ""));
    assert_eq!(ids(&f), ["PC005"]);
    assert_eq!(f[0].field, "jwt.providers[0]");
    assert_eq!(
        ids(&lint_text(&with("audiences: [api]", "audiences: []"))),
        ["PC005"]
    );
}

#[test]
fn pc006_hmac_key_shorter_than_the_hash() {
    // The filter ignores an oct key too short for the algorithm when another one fits; the
    // lint says it is there.
    let key = |alg: &str, k: &str| {
        with(
            "alg: HS256, k: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
            &format!("alg: HS256, k: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}}, {{kty: oct, kid: k2, alg: {alg}, k: \"{k}\"}}"),
        )
    };
    let f = lint_text(&key("HS256", "AAAAAAAAAAAAAAAAAAAAAA")); // 16 bytes
    assert_eq!(ids(&f), ["PC006"]);
    assert!(
        f[0].message
            .contains("HS256 key `k2` has 16 bytes, 32 needed"),
        "{}",
        f[0].message
    );
    assert_eq!(f[0].field, "jwt.providers[0].jwks.inline.keys[1]");
    // 32 bytes are too few for HS512, enough for HS256.
    assert_eq!(
        ids(&lint_text(&key(
            "HS512",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        ))),
        ["PC006"]
    );
    assert_eq!(
        ids(&lint_text(&key(
            "HS256",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        ))),
        Vec::<&str>::new()
    );
}

#[test]
fn pc007_long_clock_skew() {
    let f = lint_text(&with(
        "max_lifetime_s: 3600",
        "max_lifetime_s: 3600\n      clock_skew_s: 900",
    ));
    assert_eq!(ids(&f), ["PC007"]);
    assert_eq!(f[0].field, "jwt.providers[0].clock_skew_s");
    assert_eq!(
        ids(&lint_text(&with(
            "max_lifetime_s: 3600",
            "max_lifetime_s: 3600\n      clock_skew_s: 60"
        ))),
        Vec::<&str>::new()
    );
}

#[test]
fn pc008_no_max_lifetime_is_a_note() {
    let f = lint_text(&with("      max_lifetime_s: 3600\n", ""));
    assert_eq!(ids(&f), ["PC008"]);
    assert_eq!(f[0].severity(), Severity::Note);
    assert!(!lint::fails(&f, true), "a note never fails the lint");
}

#[test]
fn pc009_limit_keyed_on_a_client_chosen_header_for_unauthenticated_traffic() {
    let public = with(
        "  default_requirement:",
        "  requirements:\n    - {name: pub, when: 'request.url_path.startsWith(\"/public/\")', require: {allow_missing: {}}}\n  default_requirement:",
    );
    let keyed = |key: &str| public.replacen("key: jwt.claims.sub", &format!("key: '{key}'"), 1);
    let f = lint_text(&keyed(r#"request.headers["x-client-id"]"#));
    assert_eq!(ids(&f), ["PC009"]);
    assert_eq!(f[0].field, "rate_limits.limits[0].key");
    let at = f[0].location.as_ref().unwrap();
    assert_eq!(
        (at.line, at.column),
        (20, 30),
        "points at `request.headers` in the key"
    );
    // Keyed on the connection's address: nothing to aim with.
    assert_eq!(
        ids(&lint_text(&keyed("source.address"))),
        Vec::<&str>::new()
    );
    // Every request carries a verified token: no unauthenticated traffic reaches the limit.
    assert_eq!(
        ids(&lint_text(&CLEAN.replacen(
            "key: jwt.claims.sub",
            r#"key: 'request.headers["x-client-id"]'"#,
            1
        ))),
        Vec::<&str>::new()
    );
}

#[test]
fn pc010_rule_that_can_never_match() {
    let f = lint_text(&with(
        r#"allow: request.method == "GET""#,
        "allow: 'false // disabled'",
    ));
    assert_eq!(ids(&f), ["PC010"]);
    let f = lint_text(&with(
        r#"allow: request.method == "GET""#,
        "when: \"false\"\n      allow: request.method == \"GET\"",
    ));
    assert_eq!(ids(&f), ["PC010"]);
    assert_eq!(f[0].field, "policy.rules[0].when");
}

#[test]
fn pc011_rule_shadowed_by_an_earlier_one() {
    let everything = with(
        "    - name: readers",
        "    - name: everyone\n      allow: 'true'\n    - name: readers",
    );
    let f = lint_text(&everything);
    assert_eq!(ids(&f), ["PC011"]);
    assert!(
        f[0].message.contains("`everyone` allows every request"),
        "{}",
        f[0].message
    );
    let repeated = with(
        "    - name: readers",
        "    - name: gets\n      allow: request.method ==  \"GET\"  // same\n    - name: readers",
    );
    let f = lint_text(&repeated);
    assert_eq!(ids(&f), ["PC011"]);
    assert!(f[0].message.contains("repeats the earlier rule `gets`"));
    // A guarded allow-all does not shadow what follows.
    let guarded = with(
        "    - name: readers",
        "    - name: admin\n      when: request.url_path.startsWith(\"/admin\")\n      allow: 'true'\n    - name: readers",
    );
    assert_eq!(ids(&lint_text(&guarded)), Vec::<&str>::new());
}

#[test]
fn pc012_attributes_not_available_at_request_time() {
    let f = lint_text(&with(
        r#"allow: request.method == "GET""#,
        r#"allow: request.method == "GET" && response.code == 200"#,
    ));
    // The filter rejects it (PC000) and the lint says why (PC012), at the attribute.
    assert_eq!(ids(&f), ["PC000", "PC012"]);
    let at = f[1].location.as_ref().unwrap();
    assert_eq!((at.line, at.column), (15, 41));
    // `jwt` in a requirement's `when`: it selects the authentication, so it runs before it.
    let f = lint_text(&with(
        "  default_requirement:",
        "  requirements:\n    - {name: r, when: 'jwt.provider == \"corp\"', require: {provider: corp}}\n  default_requirement:",
    ));
    assert!(ids(&f).contains(&"PC012"), "{:?}", ids(&f));
}

#[test]
fn pc012_in_a_cel_file_points_into_the_file() {
    let d = dir(&[
        (
            "config.yaml",
            &with(
                r#"allow: request.method == "GET""#,
                "allow: {file: rule.cel}",
            ),
        ),
        (
            "rule.cel",
            "// a comment\nrequest.method == \"GET\"\n  && upstream.address != \"\"\n",
        ),
    ]);
    let f = lint::lint_file(&d.join("config.yaml")).unwrap();
    let pc012: Vec<_> = f.iter().filter(|f| f.rule.id == "PC012").collect();
    assert_eq!(pc012.len(), 1, "{f:?}");
    let at = pc012[0].location.as_ref().unwrap();
    assert_eq!(
        (at.file.file_name().unwrap().to_str(), at.line, at.column),
        (Some("rule.cel"), 3, 6)
    );
}

const WASM_PLUGIN: &str = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: portcullis}
spec:
  url: oci://example/portcullis:1
  failStrategy: FAIL_CLOSE
  pluginConfig:
    jwt:
      providers:
        - name: corp
          issuer: https://issuer.example.com
          audiences: [api]
          max_lifetime_s: 3600
          jwks: {remote: {cluster: "outbound|443||issuer.example.com", path: /jwks.json}}
      default_requirement: {provider: corp}
    policy:
      default_action: allow
"#;

#[test]
fn pc013_fail_open_and_findings_inside_manifests() {
    let f = lint_text(&format!("---\n{WASM_PLUGIN}"));
    // The embedded configuration is linted, positions are in the manifest (second document).
    assert_eq!(ids(&f), ["PC001"]);
    assert_eq!(f[0].field, "spec.pluginConfig.policy.default_action");
    assert_eq!(f[0].location.as_ref().unwrap().line, 18);
    let f = lint_text(&WASM_PLUGIN.replace("FAIL_CLOSE", "FAIL_OPEN"));
    assert_eq!(ids(&f), ["PC013", "PC001"]);
    assert_eq!(f[0].field, "spec.failStrategy");
    let eg = "kind: EnvoyExtensionPolicy\nspec:\n  wasm:\n    - name: p\n      failOpen: true\n      config: {policy: {default_action: deny}}\n";
    assert_eq!(ids(&lint_text(eg)), ["PC013"]);
    assert_eq!(
        ids(&lint_text(&eg.replace("failOpen: true", "failOpen: false"))),
        Vec::<&str>::new()
    );
}

#[test]
fn pc014_jwks_fetched_without_tls() {
    let plain = WASM_PLUGIN
        .replace("outbound|443|", "outbound|80|")
        .replace("default_action: allow", "default_action: deny");
    let f = lint_text(&plain);
    assert_eq!(ids(&f), ["PC014"]);
    assert_eq!(
        f[0].field,
        "spec.pluginConfig.jwt.providers[0].jwks.remote.cluster"
    );
    assert_eq!(
        ids(&lint_text(
            &WASM_PLUGIN.replace("default_action: allow", "default_action: deny")
        )),
        Vec::<&str>::new()
    );
    // An Envoy bootstrap: the cluster is known, and has no transport socket.
    let config = r#"{\"jwt\":{\"providers\":[{\"name\":\"p\",\"issuer\":\"https://i.example\",\"audiences\":[\"a\"],\"max_lifetime_s\":60,\"jwks\":{\"remote\":{\"cluster\":\"jwks\",\"path\":\"/k\"}}}],\"default_requirement\":{\"provider\":\"p\"}}}"#;
    let bootstrap = |socket: &str| {
        format!(
            r#"static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                root_id: portcullis
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{config}"
  clusters:
  - name: jwks
{socket}"#
        )
    };
    let f = lint_text(&bootstrap(""));
    assert_eq!(ids(&f), ["PC014"], "{f:?}");
    let tls = "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n";
    assert_eq!(ids(&lint_text(&bootstrap(tls))), Vec::<&str>::new());
}

#[test]
fn pc015_pc016_suppressions() {
    let suppressed = with(
        "default_action: deny",
        "default_action: allow  # portcullis-lint: allow PC001 -- an internal API behind mTLS",
    );
    let f = lint_text(&suppressed);
    assert_eq!(ids(&f), Vec::<&str>::new());
    assert_eq!(
        f[0].suppressed.as_deref(),
        Some("an internal API behind mTLS")
    );
    assert!(!lint::fails(&f, true));
    // On the line above works too.
    let above = with(
        "  default_action: deny",
        "  # portcullis-lint: allow PC001 -- an internal API behind mTLS\n  default_action: allow",
    );
    assert_eq!(ids(&lint_text(&above)), Vec::<&str>::new());
    // Without a reason it suppresses nothing and is itself an error.
    let no_reason = with(
        "default_action: deny",
        "default_action: allow  # portcullis-lint: allow PC001",
    );
    assert_eq!(ids(&lint_text(&no_reason)), ["PC001", "PC015"]);
    // A suppression that matches nothing.
    let unused = with(
        "default_action: deny",
        "default_action: deny  # portcullis-lint: allow PC001 -- no longer needed",
    );
    assert_eq!(ids(&lint_text(&unused)), ["PC016"]);
}

#[test]
fn exit_status_follows_severity_and_deny_warnings() {
    let d = dir(&[
        (
            "warn.yaml",
            &with("default_action: deny", "default_action: allow"),
        ),
        (
            "error.yaml",
            &with("key: jwt.claims.sub", "key: response.code"),
        ),
        ("clean.yaml", CLEAN),
    ]);
    let status = |file: &str, deny_warnings: bool| {
        lint::run(&Options {
            paths: vec![d.join(file)],
            format: Format::Json,
            deny_warnings,
        })
    };
    assert_eq!(status("clean.yaml", true), 0);
    assert_eq!(status("warn.yaml", false), 0);
    assert_eq!(status("warn.yaml", true), 1);
    assert_eq!(status("error.yaml", false), 1);
    assert_eq!(status("missing.yaml", false), 2);
}

#[test]
fn text_json_and_sarif_reports() {
    let f = lint_text(&with("default_action: deny", "default_action: allow"));
    let text = lint::output::render(&f, Format::Text);
    assert!(
        text.starts_with("warning[PC001]: authorization defaults to allow\n  --> "),
        "{text}"
    );
    assert!(text.contains("config.yaml:12:3\n   = field: policy.default_action\n   = why: "));
    assert!(text.ends_with("lint: 0 error(s), 1 warning(s), 0 note(s), 0 suppressed\n"));
    let json: serde_json::Value =
        serde_json::from_str(&lint::output::render(&f, Format::Json)).unwrap();
    assert_eq!(json[0]["id"], "PC001");
    assert_eq!(json[0]["severity"], "warning");
    assert_eq!(json[0]["line"], 12);
    let sarif: serde_json::Value =
        serde_json::from_str(&lint::output::render(&f, Format::Sarif)).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(
        run["tool"]["driver"]["rules"].as_array().unwrap().len(),
        lint::RULES.len()
    );
    let result = &run["results"][0];
    assert_eq!(result["ruleId"], "PC001");
    assert_eq!(result["level"], "warning");
    assert_eq!(
        result["locations"][0]["physicalLocation"]["region"]["startLine"],
        12
    );
    let rule_index = result["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(run["tool"]["driver"]["rules"][rule_index]["id"], "PC001");
}

#[test]
fn rule_ids_are_unique_and_documented() {
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for rule in lint::RULES {
        assert!(seen.insert(rule.id), "{} twice", rule.id);
        assert!(
            docs.contains(&format!("| {} |", rule.id)),
            "{} is not in docs/operations.md",
            rule.id
        );
    }
}

#[test]
fn the_shipped_examples_lint_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "policies/portcullis.yaml",
        "envoy-examples/istio/wasmplugin.yaml",
        "envoy-examples/envoy-gateway/extension-policy.yaml",
    ] {
        let findings = lint::lint_file(&root.join(file)).unwrap();
        let open: Vec<_> = findings
            .iter()
            .filter(|f| f.suppressed.is_none() && f.severity() >= Severity::Warning)
            .map(|f| format!("{}: {}", f.rule.id, f.message))
            .collect();
        assert_eq!(open, Vec::<String>::new(), "{file}");
    }
}
