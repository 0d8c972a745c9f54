//! Reading `/metrics`: the Prometheus text exposition format, parsed into samples.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of a Prometheus text exposition (comments and blank lines skipped);
/// panics naming a line it cannot read.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_labels, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').unwrap_or_else(|| panic!("unbalanced braces in {line:?}"));
                (&line[..close + 1], line[close + 1..].trim())
            }
            None => {
                let sp = line.find(' ').unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
                (&line[..sp], line[sp + 1..].trim())
            }
        };
        let (name, labels) = match name_labels.find('{') {
            Some(open) => (&name_labels[..open], parse_labels(&name_labels[open + 1..name_labels.len() - 1])),
            None => (name_labels, BTreeMap::new()),
        };
        let value = rest.split_whitespace().next().unwrap_or_default();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("bad value in metrics line {line:?}: {e}")),
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    out
}

/// `k="v",k2="v2"` (values with `\"`, `\\` and `\n` escapes).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').unwrap_or_else(|| panic!("bad labels {s:?}"));
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        assert!(after.starts_with('"'), "label value not quoted in {s:?}");
        let mut value = String::new();
        let mut chars = after[1..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i + 2);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {s:?}"));
        out.insert(key, value);
        rest = after[end..].trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The sum of the samples named `name` whose labels include all of `labels`
/// (None: no such sample).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse(text)
        .into_iter()
        .filter(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Whether some sample is named `name`.
pub fn present(text: &str, name: &str) -> bool {
    parse(text).iter().any(|s| s.name == name)
}
