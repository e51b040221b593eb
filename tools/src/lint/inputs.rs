//! What a linted file holds: plugin configurations (each with where it is written) and, for
//! Kubernetes manifests and Envoy bootstraps, the surrounding settings the lint also checks.

use super::Location;
use crate::bundle;
use crate::locate::{self, Segment};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a plugin configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// A configuration file of its own.
    Plain,
    /// `spec.pluginConfig` of an Istio `WasmPlugin`.
    WasmPlugin,
    /// `spec.wasm[i].config` of an Envoy Gateway `EnvoyExtensionPolicy`.
    ExtensionPolicy,
    /// The `configuration` of an `envoy.filters.http.wasm` filter in an Envoy bootstrap.
    EnvoyBootstrap,
}

/// One plugin configuration (or a manifest without one) to check.
#[derive(Debug)]
pub struct Input {
    pub container: Container,
    /// The file, and the text of the YAML document holding the configuration.
    pub origin: PathBuf,
    pub document_text: String,
    /// The document's first line in the file (0-based), for multi-document manifests.
    pub line_offset: usize,
    /// The parsed document (the manifest, the bootstrap or the configuration itself).
    pub document: Value,
    /// The path of the configuration inside the document (empty for a plain file).
    pub prefix: Vec<Segment>,
    /// `prefix` as text, for manifest field paths (`spec.pluginConfig`).
    pub prefix_text: String,
    /// The configuration, `.cel` and JWKS files inlined (`{file, source}` for CEL), if any.
    pub config: Option<Value>,
    /// The directory `.cel` and JWKS files are relative to.
    pub base: PathBuf,
    /// For Envoy bootstraps: every cluster and whether it has a TLS transport socket.
    pub clusters: Option<BTreeMap<String, bool>>,
    /// Set when the configuration could not be read (a missing `.cel` file): reported as
    /// PC000 and nothing else is checked.
    pub unreadable: Option<(String, String)>,
}

/// The inputs of one file.
pub fn read(path: &Path, text: &str) -> Result<Vec<Input>, String> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut inputs = Vec::new();
    for (doc_text, line_offset) in documents(text) {
        let document = bundle::parse_document(&doc_text).map_err(|e| {
            let e = e.trim_start();
            format!(
                "{}: document at line {}: {e}",
                path.display(),
                line_offset + 1
            )
        })?;
        if document.is_null() {
            continue;
        }
        let new = |container, prefix_text: &str, config: Option<Value>| {
            let mut input = Input {
                container,
                origin: path.to_path_buf(),
                document_text: doc_text.clone(),
                line_offset,
                document: document.clone(),
                prefix: locate::parse_path(prefix_text),
                prefix_text: prefix_text.to_owned(),
                config: None,
                base: base.clone(),
                clusters: None,
                unreadable: None,
            };
            if let Some(mut config) = config {
                match bundle::inline_files(&mut config, &base, path) {
                    Ok(()) => input.config = Some(config),
                    Err(e) => input.unreadable = Some((String::new(), e)),
                }
            }
            input
        };
        let kind = document.get("kind").and_then(Value::as_str);
        match kind {
            Some("WasmPlugin") => {
                let config = document.pointer("/spec/pluginConfig").cloned();
                inputs.push(new(Container::WasmPlugin, "spec.pluginConfig", config));
            }
            Some("EnvoyExtensionPolicy") => {
                let wasm = document
                    .pointer("/spec/wasm")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (i, w) in wasm.iter().enumerate() {
                    let prefix = format!("spec.wasm[{i}].config");
                    inputs.push(new(
                        Container::ExtensionPolicy,
                        &prefix,
                        w.get("config").cloned(),
                    ));
                }
            }
            Some(_) => {} // other manifests (ConfigMap, IstioOperator, …): nothing to lint
            None if document.get("static_resources").is_some() => {
                let clusters = bootstrap_clusters(&document);
                for (field, config_text) in bootstrap_plugin_configs(&document) {
                    let mut input = new(Container::EnvoyBootstrap, &field, None);
                    input.clusters = Some(clusters.clone());
                    match bundle::parse_document(&config_text) {
                        Ok(config) => input.config = Some(config),
                        Err(e) => {
                            input.unreadable = Some((field.clone(), format!("not JSON: {e}")))
                        }
                    }
                    inputs.push(input);
                }
            }
            None => inputs.push(new(Container::Plain, "", Some(document.clone()))),
        }
    }
    Ok(inputs)
}

/// The YAML documents of a file (split at `---` lines) and the line each starts on.
fn documents(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            out.push((std::mem::take(&mut current), start));
            start = n + 1;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    out.push((current, start));
    out
}

/// `(field path, configuration JSON)` of every Wasm filter in a bootstrap whose root id is
/// `portcullis`.
fn bootstrap_plugin_configs(document: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(document, String::new(), &mut |path, node| {
        let config = node.get("config");
        let is_portcullis = node
            .get("@type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"))
            && config
                .and_then(|c| c.get("root_id"))
                .and_then(Value::as_str)
                == Some("portcullis");
        if is_portcullis {
            if let Some(value) = config
                .and_then(|c| c.pointer("/configuration/value"))
                .and_then(Value::as_str)
            {
                out.push((
                    format!("{path}.config.configuration.value"),
                    value.to_owned(),
                ));
            }
        }
    });
    out
}

/// Every cluster of a bootstrap, and whether it speaks TLS.
fn bootstrap_clusters(document: &Value) -> BTreeMap<String, bool> {
    document
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?.to_owned();
            let tls = c
                .pointer("/transport_socket/typed_config/@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains("tls.v3.UpstreamTlsContext"));
            Some((name, tls))
        })
        .collect()
}

fn walk(node: &Value, path: String, visit: &mut dyn FnMut(&str, &Value)) {
    visit(&path, node);
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, p, visit);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{path}[{i}]"), visit);
            }
        }
        _ => {}
    }
}

impl Input {
    /// Where a field of the configuration (a path relative to it) is written.
    pub fn locate_config_field(&self, field: &str) -> Option<Location> {
        let mut path = self.prefix.clone();
        if self.container != Container::EnvoyBootstrap {
            path.extend(locate::parse_path(field));
        }
        self.locate_document_path(&path)
    }

    /// Where a field of the document (a manifest path) is written.
    pub fn locate_document_field(&self, field: &str) -> Option<Location> {
        self.locate_document_path(&locate::parse_path(field))
    }

    fn locate_document_path(&self, path: &[Segment]) -> Option<Location> {
        let at = locate::locate(&self.document_text, path)?;
        Some(Location {
            file: self.origin.clone(),
            line: at.line + self.line_offset,
            column: at.column,
        })
    }

    /// The full field path of a configuration field, as the reader sees it in this file.
    pub fn config_field(&self, field: &str) -> String {
        match (self.prefix_text.as_str(), field) {
            ("", f) => f.to_owned(),
            (p, "") => p.to_owned(),
            (p, f) if self.container == Container::EnvoyBootstrap => format!("{p} → {f}"),
            (p, f) => format!("{p}.{f}"),
        }
    }

    /// Where byte `offset` of the CEL expression at `field` is written, `needle` being the
    /// text found there: in its `.cel` file, or in the YAML after the field's key.
    pub fn locate_cel(&self, field: &str, offset: usize, needle: &str) -> Option<Location> {
        let expr = lookup(self.config.as_ref()?, field)?;
        if let (Some(file), Some(source)) = (
            expr.get("file").and_then(Value::as_str),
            expr.get("source").and_then(Value::as_str),
        ) {
            let (line, column) = line_column(source, offset);
            return Some(Location {
                file: self.base.join(file),
                line,
                column,
            });
        }
        let key = self.locate_config_field(field)?;
        if self.container == Container::EnvoyBootstrap {
            return Some(key);
        }
        // The expression is a YAML scalar after the key: find the text there.
        let doc_line = key.line.checked_sub(self.line_offset + 1)?;
        let start = line_start(&self.document_text, doc_line)?;
        let found = self.document_text.get(start..)?.find(needle)? + start;
        let (line, column) = line_column(&self.document_text, found);
        Some(Location {
            file: self.origin.clone(),
            line: line + self.line_offset,
            column,
        })
    }
}

/// The value at a field path.
pub fn lookup<'v>(value: &'v Value, field: &str) -> Option<&'v Value> {
    let mut node = value;
    for segment in locate::parse_path(field) {
        node = match segment {
            Segment::Key(k) => node.get(k.as_str())?,
            Segment::Index(i) => node.get(i)?,
        };
    }
    Some(node)
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn line_start(text: &str, line: usize) -> Option<usize> {
    if line == 0 {
        return Some(0);
    }
    text.match_indices('\n').nth(line - 1).map(|(i, _)| i + 1)
}
