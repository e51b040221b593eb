//! Where a field of a YAML (or JSON) document is written, so that errors found on the parsed
//! value (by the filter's compiler, by serde) can point at `file:line:column` instead of a
//! position in the intermediate JSON, and name the rule or case they are about.

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// A 1-based line and column (columns count characters, as editors do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One step of a field path such as `policy.rules[7].allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Splits a field path as `serde_path_to_error` and the filter's `ConfigError` write it
/// (`a.b[2].c`; `(root)`, `.` and the empty string are the root). A segment that is not
/// understood (`?`, a malformed index) ends the path: locating then stops at its parent.
pub fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    if matches!(path, "" | "." | "(root)") {
        return out;
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if key == "?" {
            return out;
        }
        if !key.is_empty() {
            out.push(Segment::Key(key.to_owned()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, after)) = inner.split_once(']') else {
                return out;
            };
            let Ok(i) = index.parse() else {
                return out;
            };
            out.push(Segment::Index(i));
            rest = after;
        }
        if !rest.is_empty() {
            return out;
        }
    }
    out
}

/// The positions of a YAML document's nodes: enough to find a field, nothing more.
#[derive(Debug)]
struct Node {
    at: Position,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar,
    Seq(Vec<Node>),
    /// Keys that are not scalars get no name (no configuration field has one).
    Map(Vec<(Option<String>, Position, Node)>),
}

enum Frame {
    Seq(Position, Vec<Node>),
    Map(
        Position,
        Vec<(Option<String>, Position, Node)>,
        Option<(Option<String>, Position)>,
    ),
}

fn position(m: saphyr_parser::Marker) -> Position {
    Position {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// Builds the node tree of the first document, iteratively: a deeply nested input must not
/// exhaust the stack of a CLI that is reporting an error about it. `None` if it does not parse.
fn parse_tree(text: &str) -> Option<Node> {
    use saphyr_parser::{Event, Parser};
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        let at = position(span.start);
        let (node, scalar) = match event {
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(at, Vec::new()));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(at, Vec::new(), None));
                continue;
            }
            Event::SequenceEnd => match stack.pop()? {
                Frame::Seq(at, items) => (
                    Node {
                        at,
                        kind: Kind::Seq(items),
                    },
                    None,
                ),
                Frame::Map(..) => return None,
            },
            Event::MappingEnd => match stack.pop()? {
                Frame::Map(at, entries, _) => (
                    Node {
                        at,
                        kind: Kind::Map(entries),
                    },
                    None,
                ),
                Frame::Seq(..) => return None,
            },
            Event::Scalar(value, ..) => (
                Node {
                    at,
                    kind: Kind::Scalar,
                },
                Some(value.into_owned()),
            ),
            Event::Alias(_) => (
                Node {
                    at,
                    kind: Kind::Scalar,
                },
                None,
            ),
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => continue,
        };
        match stack.last_mut() {
            None => return Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => *pending = Some((scalar, node.at)),
                Some((key, key_at)) => entries.push((key, key_at, node)),
            },
        }
    }
    None
}

/// Where the deepest existing prefix of `path` is written in `text`: a mapping entry's key, a
/// sequence item's value. `None` when the text does not parse as YAML.
pub fn locate(text: &str, path: &[Segment]) -> Option<Position> {
    let root = parse_tree(text)?;
    let mut node = &root;
    let mut at = root.at;
    for segment in path {
        let next = match (segment, &node.kind) {
            (Segment::Key(k), Kind::Map(entries)) => entries
                .iter()
                .rev()
                .find(|(key, ..)| key.as_deref() == Some(k.as_str()))
                .map(|(_, key_at, value)| (*key_at, value)),
            (Segment::Index(i), Kind::Seq(items)) => items.get(*i).map(|n| (n.at, n)),
            _ => None,
        };
        match next {
            Some((a, n)) => {
                at = a;
                node = n;
            }
            None => break,
        }
    }
    Some(at)
}

/// serde_json ends its messages with ` at line L column C`: a position in JSON the user never
/// wrote (the YAML converted, or a configuration built in memory). Drops it.
pub fn strip_json_position(message: &str) -> &str {
    if let Some(i) = message.rfind(" at line ") {
        let tail = &message[i + " at line ".len()..];
        if let Some((line, column)) = tail.split_once(" column ") {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if digits(line) && digits(column) {
                return &message[..i];
            }
        }
    }
    message
}

/// What the items of a list are called in messages: `policy.rules[7]` is a rule.
fn item_kind(list: &str) -> &str {
    match list {
        "rules" => "rule",
        "limits" => "limit",
        "providers" => "provider",
        "requirements" => "requirement",
        "cases" => "case",
        other => other.strip_suffix('s').unwrap_or("item"),
    }
}

/// The innermost named list item on `path` in `value`, as ``rule `admin-pages` ``: an index
/// alone means nothing to the person who wrote the file.
pub fn item_label(value: &Value, path: &[Segment]) -> Option<String> {
    let mut node = value;
    let mut list = "";
    let mut label = None;
    for segment in path {
        match segment {
            Segment::Key(k) => {
                node = node.get(k.as_str())?;
                list = k.as_str();
            }
            Segment::Index(i) => {
                node = node.get(*i)?;
                if let Some(name) = node.get("name").and_then(Value::as_str) {
                    label = Some(format!("{} `{name}`", item_kind(list)));
                }
            }
        }
    }
    label
}

/// The unknown field a serde message names, so that the key itself is located rather than
/// the mapping that holds it.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// An error about `field` of the document `origin` (text `text`, parsed `value`), as
/// `origin:line:column: field `f` (rule `x`): message`.
pub fn field_error(origin: &Path, text: &str, value: &Value, field: &str, message: &str) -> String {
    let message = strip_json_position(message);
    let path = parse_path(field);
    let mut target = path.clone();
    if let Some(name) = unknown_field(message) {
        if target.last() != Some(&Segment::Key(name.to_owned())) {
            target.push(Segment::Key(name.to_owned()));
        }
    }
    let mut out = origin.display().to_string();
    if let Some(at) = locate(text, &target) {
        out.push_str(&format!(":{at}"));
    }
    let shown = if path.is_empty() { "(root)" } else { field };
    out.push_str(&format!(": field `{shown}`"));
    if let Some(label) = item_label(value, &path) {
        out.push_str(&format!(" ({label})"));
    }
    out.push_str(&format!(": {message}"));
    out
}

/// Deserializes `value` (the part of a document at `prefix`) into `T`; an error is reported
/// as [`field_error`] with the full field path.
pub fn deserialize_at<T: DeserializeOwned>(
    origin: &Path,
    text: &str,
    document: &Value,
    prefix: &str,
    value: &Value,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = match (prefix, inner.as_str()) {
            (p, "." | "") => p.to_owned(),
            ("", i) => i.to_owned(),
            (p, i) if i.starts_with('[') => format!("{p}{i}"),
            (p, i) => format!("{p}.{i}"),
        };
        field_error(origin, text, document, &field, &e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_owned())
    }

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn paths_parse_as_serde_path_to_error_prints_them() {
        assert_eq!(
            parse_path("policy.rules[7].alow"),
            vec![key("policy"), key("rules"), Segment::Index(7), key("alow")]
        );
        assert_eq!(
            parse_path("a[1][2]"),
            vec![key("a"), Segment::Index(1), Segment::Index(2)]
        );
        assert_eq!(parse_path("(root)"), vec![]);
        assert_eq!(parse_path("."), vec![]);
        assert_eq!(parse_path("a.?.b"), vec![key("a")]);
        assert_eq!(parse_path("a[x].b"), vec![key("a")]);
    }

    const BLOCK: &str = "\
policy:
  default_action: deny
  rules:
    - name: first
      allow: 'true'
    - name: second
      when: x
      alow: y
";

    const FLOW: &str = "\
policy:
  rules:
    - {name: first, allow: 'true'}
    - {name: second, when: x, alow: y}
rate_limits: {limits: [{name: l, key: k}]}
";

    #[test]
    fn block_style_keys_and_items() {
        let p = parse_path;
        assert_eq!(locate(BLOCK, &p("policy")), at(1, 1));
        assert_eq!(locate(BLOCK, &p("policy.default_action")), at(2, 3));
        assert_eq!(locate(BLOCK, &p("policy.rules[1]")), at(6, 7));
        assert_eq!(locate(BLOCK, &p("policy.rules[1].alow")), at(8, 7));
        assert_eq!(locate(BLOCK, &p("policy.rules[0].allow")), at(5, 7));
    }

    #[test]
    fn flow_style_keys_and_items() {
        let p = parse_path;
        assert_eq!(locate(FLOW, &p("policy.rules[0]")), at(3, 7));
        assert_eq!(locate(FLOW, &p("policy.rules[1].alow")), at(4, 31));
        assert_eq!(locate(FLOW, &p("rate_limits.limits[0].key")), at(5, 34));
    }

    #[test]
    fn the_deepest_existing_prefix_is_reported() {
        let p = parse_path;
        assert_eq!(locate(BLOCK, &p("policy.rules[1].missing")), at(6, 7));
        assert_eq!(locate(BLOCK, &p("policy.rules[9].allow")), at(3, 3));
        assert_eq!(locate(BLOCK, &p("nothing.here")), at(1, 1));
        // An index into a mapping, a key into a list: stop at what exists.
        assert_eq!(locate(BLOCK, &p("policy[0]")), at(1, 1));
        assert_eq!(locate(BLOCK, &p("policy.rules.name")), at(3, 3));
    }

    #[test]
    fn json_documents_are_located_too() {
        let json = "{\n  \"policy\": {\"rules\": [\n    {\"name\": \"a\", \"alow\": \"x\"}]}}\n";
        assert_eq!(locate(json, &parse_path("policy.rules[0].alow")), at(3, 19));
    }

    #[test]
    fn columns_count_characters() {
        let text = "a: {é: 1, b: 2}\n";
        assert_eq!(locate(text, &parse_path("a.b")), at(1, 11));
    }

    #[test]
    fn unparsable_text_locates_nothing() {
        assert_eq!(locate("a: [1, 2\n", &parse_path("a")), None);
        assert_eq!(locate("", &parse_path("a")), None);
    }

    #[test]
    fn json_positions_are_stripped() {
        assert_eq!(
            strip_json_position("unknown field `alow`, expected one of `a` at line 1 column 3668"),
            "unknown field `alow`, expected one of `a`"
        );
        assert_eq!(
            strip_json_position("at line 1 column x"),
            "at line 1 column x"
        );
        assert_eq!(strip_json_position("plain"), "plain");
        assert_eq!(
            strip_json_position("x at line 3 column 4 y"),
            "x at line 3 column 4 y"
        );
    }

    #[test]
    fn errors_name_the_position_the_field_and_the_item() {
        let value: Value = serde_yaml::from_str(FLOW).unwrap();
        let e = field_error(
            Path::new("p.yaml"),
            FLOW,
            &value,
            "policy.rules[1]",
            "unknown field `alow`, expected one of `name`, `allow` at line 1 column 90",
        );
        assert_eq!(
            e,
            "p.yaml:4:31: field `policy.rules[1]` (rule `second`): unknown field `alow`, \
             expected one of `name`, `allow`"
        );
        let e = field_error(Path::new("p.yaml"), FLOW, &value, "(root)", "bad");
        assert_eq!(e, "p.yaml:1:1: field `(root)`: bad");
        let e = field_error(Path::new("p.yaml"), "a: [", &Value::Null, "a", "bad");
        assert_eq!(e, "p.yaml: field `a`: bad");
    }

    #[test]
    fn the_innermost_named_item_labels_the_error() {
        let value = serde_json::json!({
            "jwt": {"providers": [{"name": "p", "claim_to_headers": [{"claim": "sub"}]}]},
            "things": [{"name": "t"}],
            "x": [{"name": "y"}],
        });
        let label = |p: &str| item_label(&value, &parse_path(p));
        assert_eq!(
            label("jwt.providers[0].claim_to_headers[0].claim").as_deref(),
            Some("provider `p`")
        );
        assert_eq!(label("things[0]").as_deref(), Some("thing `t`"));
        assert_eq!(label("x[0]").as_deref(), Some("item `y`"));
        assert_eq!(label("jwt.providers[3]"), None);
    }

    /// Text that knows where the next character goes.
    struct Writer {
        text: String,
        line: usize,
        column: usize,
    }

    impl Writer {
        fn put(&mut self, s: &str) {
            for c in s.chars() {
                if c == '\n' {
                    self.line += 1;
                    self.column = 1;
                } else {
                    self.column += 1;
                }
            }
            self.text.push_str(s);
        }

        fn here(&self) -> (usize, usize) {
            (self.line, self.column)
        }
    }

    /// Writes random rule lists, each list and each rule in block or flow style, recording
    /// where each rule and each key was written, and checks that every one is found there.
    #[test]
    fn every_written_field_is_found_where_it_was_written() {
        use proptest::prelude::*;
        let rule = (
            proptest::collection::btree_set("[a-z][a-z_]{0,6}", 1..5),
            any::<bool>(),
        );
        let config = ProptestConfig {
            cases: 300,
            ..ProptestConfig::default()
        };
        proptest!(config, |(rules in proptest::collection::vec(rule, 1..6), flow_list in any::<bool>())| {
            let mut w = Writer { text: String::new(), line: 1, column: 1 };
            let mut expected = Vec::new();
            w.put("policy:\n  rules:");
            w.put(if flow_list { " [\n" } else { "\n" });
            for (i, (keys, flow_rule)) in rules.iter().enumerate() {
                w.put(if flow_list { "    " } else { "    - " });
                expected.push((format!("policy.rules[{i}]"), w.here()));
                if flow_list || *flow_rule {
                    w.put("{");
                    for (j, k) in keys.iter().enumerate() {
                        if j > 0 {
                            w.put(", ");
                        }
                        expected.push((format!("policy.rules[{i}].{k}"), w.here()));
                        w.put(&format!("{k}: v{j}"));
                    }
                    w.put("}");
                } else {
                    for (j, k) in keys.iter().enumerate() {
                        if j > 0 {
                            w.put("\n      ");
                        }
                        expected.push((format!("policy.rules[{i}].{k}"), w.here()));
                        w.put(&format!("{k}: v{j}"));
                    }
                }
                w.put(if flow_list && i + 1 < rules.len() { ",\n" } else { "\n" });
            }
            if flow_list {
                w.put("  ]\n");
            }
            for (path, (line, column)) in &expected {
                prop_assert_eq!(
                    locate(&w.text, &parse_path(path)),
                    Some(Position { line: *line, column: *column }),
                    "{} in\n{}", path, w.text
                );
            }
        });
    }
}
