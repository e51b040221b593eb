//! `portcullis bundle`: a YAML/JSON configuration with `{file: x.cel}` and
//! `jwks: {file: keys.json}` references → the self-contained plugin configuration JSON.

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The decision header the harness asks the filter for, to learn which rule decided.
pub const DECISION_HEADER: &str = "x-portcullis-decision";

/// Reads a YAML or JSON file. Errors name the file, line and column.
pub fn read_document(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_document(&text).map_err(|e| format!("{}:{e}", path.display()))
}

/// Parses YAML (a superset of JSON). Errors start with `line:column: `.
pub fn parse_document(text: &str) -> Result<Value, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(l) => format!("{}:{}: {e}", l.line(), l.column()),
        None => format!(" {e}"),
    })?;
    serde_json::to_value(value).map_err(|e| format!(" not representable as JSON: {e}"))
}

/// Inlines `.cel` files and JWKS files; `base` is the directory paths are relative to.
pub fn inline_files(value: &mut Value, base: &Path, origin: &Path) -> Result<(), String> {
    walk(value, base, origin, "", None)
}

fn file_ref(map: &Map<String, Value>) -> Option<&str> {
    if map.len() == 1 {
        map.get("file").and_then(Value::as_str)
    } else {
        None
    }
}

fn walk(
    value: &mut Value,
    base: &Path,
    origin: &Path,
    field: &str,
    key: Option<&str>,
) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            if let Some(file) = file_ref(map).map(str::to_owned) {
                let path = base.join(&file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "{}: field `{field}`: cannot read {}: {e}",
                        origin.display(),
                        path.display()
                    )
                })?;
                if key == Some("jwks") {
                    let parsed: Value = serde_json::from_str(&text).map_err(|e| {
                        format!("{}:{}:{}: {e}", path.display(), e.line(), e.column())
                    })?;
                    let mut m = Map::new();
                    m.insert("inline".into(), parsed);
                    *map = m;
                } else {
                    map.insert("source".into(), Value::String(text));
                }
                return Ok(());
            }
            for (k, v) in map.iter_mut() {
                let f = if field.is_empty() {
                    k.clone()
                } else {
                    format!("{field}.{k}")
                };
                walk(v, base, origin, &f, Some(k))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, base, origin, &format!("{field}[{i}]"), key)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Validates with the filter's own compiler. The error names the field (and, for CEL,
/// file:line:column).
pub fn validate(config: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(config).map_err(|e| e.to_string())?;
    portcullis_filter::config::Config::from_json(&bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Reads, inlines and validates a configuration file.
pub fn bundle(path: &Path) -> Result<Value, String> {
    let mut value = read_document(path)?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    inline_files(&mut value, &base, path)?;
    if value.is_null() {
        value = Value::Object(Map::new());
    }
    validate(&value).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(value)
}

/// Sets `responses.decision_header` so the harness can see which rule allowed a request.
pub fn with_decision_header(mut config: Value) -> Value {
    if let Value::Object(root) = &mut config {
        let responses = root
            .entry("responses")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(r) = responses {
            r.insert(
                "decision_header".into(),
                Value::String(DECISION_HEADER.into()),
            );
        }
    }
    config
}

/// The `envoy.filters.http.wasm` HTTP filter entry, with the configuration as a StringValue.
pub fn envoy_snippet(config: &Value, wasm_path: &str) -> String {
    let json = config.to_string();
    let quoted = serde_json::to_string(&json).unwrap_or_default();
    format!(
        r#"- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: portcullis
      root_id: portcullis
      vm_config:
        vm_id: portcullis
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: {wasm_path}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {quoted}
"#
    )
}
