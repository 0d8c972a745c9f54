//! Reading the server's log: `key=value` fields of text lines, and JSON lines
//! (`logFormat: json`, tracing's layout) with the access-log fields.

use serde_json::Value;

/// Whether a text log contains the field `key=value` (bare or quoted) as a word of
/// its own.
pub fn has_field(text: &str, key: &str, value: &str) -> bool {
    let bare = format!("{key}={value}");
    let quoted = format!("{key}=\"{value}\"");
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .any(|w| w == bare || w == quoted)
}

/// The first value of the field `key=…` in a text log (quotes stripped).
pub fn field_value(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    text.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| w.strip_prefix(&prefix))
        .map(|v| v.trim_matches('"').to_string())
}

/// Whether a whitespace-separated word is `uid:gid`, or a field whose value it is
/// (`user=0:0`, `"uid:gid"="0:0"`): not a substring of a timestamp.
pub fn has_uid_gid_token(text: &str, uid_gid: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_matches(|c| matches!(c, '(' | ')' | '[' | ']' | '"')))
        .any(|w| w == uid_gid || w.rsplit('=').next().is_some_and(|v| v.trim_matches('"') == uid_gid))
}

/// The text log's lines at `level` (`WARN`, `ERROR`, …).
pub fn lines_at_level(text: &str, level: &str) -> Vec<String> {
    let marker = format!(" {level} ");
    text.lines().filter(|l| l.contains(&marker)).map(str::to_owned).collect()
}

/// Every non-empty line parsed as a JSON object; panics naming the first line
/// that is not one.
pub fn json_lines(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("log line {} is not JSON ({e}):\n{line}\n---- whole log ----\n{text}", i + 1)
        });
        assert!(v.is_object(), "log line {} is JSON but not an object:\n{line}", i + 1);
        out.push(v);
    }
    out
}

/// The JSON object's field `key`, at top level or under `fields` (tracing's layout).
pub fn json_field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).or_else(|| v.get("fields").and_then(|f| f.get(key)))
}

/// A string or number field as text.
pub fn json_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The access lines (objects with method, path, status and outcome) as
/// (method, path, status, outcome).
pub fn json_access_lines(lines: &[Value]) -> Vec<(String, String, String, String)> {
    lines
        .iter()
        .filter_map(|v| {
            Some((
                json_str(json_field(v, "method"))?,
                json_str(json_field(v, "path"))?,
                json_str(json_field(v, "status"))?,
                json_str(json_field(v, "outcome"))?,
            ))
        })
        .collect()
}
