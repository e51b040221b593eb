//! `portcullis bundle`: a YAML/JSON configuration with `{file: x.cel}` and
//! `jwks: {file: keys.json}` references → the self-contained plugin configuration JSON.

use crate::locate;
use serde_json::{Map, Value};
use std::path::Path;

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
    walk(value, base, "", None)
        .map_err(|e| format!("{}: field `{}`: {}", origin.display(), e.field, e.message))
}

/// A configuration error before it is located in the file.
struct FieldError {
    field: String,
    message: String,
}

fn file_ref(map: &Map<String, Value>) -> Option<&str> {
    if map.len() == 1 {
        map.get("file").and_then(Value::as_str)
    } else {
        None
    }
}

fn walk(value: &mut Value, base: &Path, field: &str, key: Option<&str>) -> Result<(), FieldError> {
    let error = |message: String| FieldError {
        field: field.to_owned(),
        message,
    };
    match value {
        Value::Object(map) => {
            if let Some(file) = file_ref(map).map(str::to_owned) {
                let path = base.join(&file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
                if key == Some("jwks") {
                    let parsed: Value = serde_json::from_str(&text).map_err(|e| {
                        error(format!(
                            "{}:{}:{}: {}",
                            path.display(),
                            e.line(),
                            e.column(),
                            locate::strip_json_position(&e.to_string())
                        ))
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
                walk(v, base, &f, Some(k))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, base, &format!("{field}[{i}]"), key)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Validates with the filter's own compiler. The error names the field (and, for CEL,
/// file:line:column).
pub fn validate(config: &Value) -> Result<(), String> {
    compile(config).map_err(|e| e.to_string())
}

fn compile(config: &Value) -> Result<(), portcullis_filter::config::ConfigError> {
    let bytes = serde_json::to_vec(config)
        .map_err(|e| portcullis_filter::config::ConfigError::new("(root)", e.to_string()))?;
    portcullis_filter::config::Config::from_json(&bytes).map(|_| ())
}

/// The CEL compiler names a `.cel` file as the configuration does (relative to it); the
/// person reading the error is elsewhere, so name it from the current directory.
fn cel_file_from_here(config: &Value, field: &str, message: &str, base: &Path) -> String {
    let mut node = Some(config);
    for segment in locate::parse_path(field) {
        node = match segment {
            locate::Segment::Key(k) => node.and_then(|n| n.get(k.as_str())),
            locate::Segment::Index(i) => node.and_then(|n| n.get(i)),
        };
    }
    let file = node.and_then(|n| n.get("file")).and_then(Value::as_str);
    match file {
        Some(file) if base != Path::new("") && base != Path::new(".") => {
            let prefix = format!("CEL error at {file}:");
            match message.strip_prefix(&prefix) {
                Some(rest) => format!("CEL error at {}:{rest}", base.join(file).display()),
                None => message.to_owned(),
            }
        }
        _ => message.to_owned(),
    }
}

/// Reads, inlines and validates a configuration file. Errors are
/// `file:line:column: field `path` (rule `name`): message`, the position being where the
/// field is written in the file.
pub fn bundle(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut value = parse_document(&text).map_err(|e| format!("{}:{e}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let as_given = value.clone();
    walk(&mut value, &base, "", None)
        .map_err(|e| locate::field_error(path, &text, &as_given, &e.field, &e.message))?;
    if value.is_null() {
        value = Value::Object(Map::new());
    }
    compile(&value).map_err(|e| {
        let message = cel_file_from_here(&value, &e.field, &e.message, &base);
        locate::field_error(path, &text, &value, &e.field, &message)
    })?;
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
