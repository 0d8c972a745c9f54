//! Writing access lines: formatted here, in the layout `tracing`'s text or
//! JSON formatter gives every other line, and batched per runtime worker.
//!
//! Why not a `tracing` event: at tens of thousands of cache hits a second,
//! the generic formatter (a visitor per field, `Debug` through `Display`
//! wrappers, a timestamp built per line) and one channel message per line
//! (an allocation, and a wake-up of the writer thread) were a fifth of a
//! hit's CPU. Here a line is written straight into a buffer kept by the
//! worker thread, which hands the buffer to the log writer as one message
//! when it fills or when the worker runs out of work (`flush_thread`, called
//! by the runtime when a worker parks or stops): an idle server writes each
//! line at once, a busy one a batch at a time. Threads that never park
//! (blocking-pool threads) write each line at once.
//!
//! Without an installed sink (the library in a test) lines go through
//! `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tracing::{Level, info, warn};
use tracing_appender::non_blocking::NonBlocking;

/// Past this, a worker's batch goes to the writer without waiting to park.
const BATCH_BYTES: usize = 32 * 1024;

struct Sink {
    writer: NonBlocking,
    json: bool,
}

impl Sink {
    fn format(&self, out: &mut Vec<u8>, r: &Record<'_>) {
        if self.json { json_line(out, r) } else { text_line(out, r) }
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    /// Set the first time this thread parks: a runtime worker, which will
    /// flush again when it next runs out of work.
    worker: bool,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::default();
}

/// Sends access lines to `writer` (the one `tracing` writes to), as JSON
/// objects when `json`. Once per process; later calls are ignored.
pub fn install(writer: NonBlocking, json: bool) {
    let _ = SINK.set(Sink { writer, json });
}

/// Hands this thread's batch to the writer; for the runtime's
/// `on_thread_park` and `on_thread_stop`.
pub fn flush_thread() {
    let Some(sink) = SINK.get() else { return };
    let _ = BATCH.try_with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else { return };
        b.worker = true;
        if !b.buf.is_empty() {
            let _ = sink.writer.clone().write_all(&b.buf);
            b.buf.clear();
        }
    });
}

/// One request, as its access line reports it.
pub struct Record<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub ns: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub latency: Duration,
    pub outcome: &'a str,
    /// Why an error response was sent, in full.
    pub error: Option<&'a str>,
    /// False: the body ended before all of it was sent (a `WARN` line).
    pub complete: bool,
}

pub fn write(r: &Record<'_>) {
    let enabled = match r.complete {
        true => tracing::enabled!(target: "access", Level::INFO),
        false => tracing::enabled!(target: "access", Level::WARN),
    };
    if !enabled {
        return;
    }
    let Some(sink) = SINK.get() else { return through_tracing(r) };
    let direct = BATCH.try_with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else { return true };
        let start = b.buf.len();
        sink.format(&mut b.buf, r);
        if !b.worker {
            let line = b.buf.split_off(start);
            let _ = sink.writer.clone().write_all(&line);
        } else if b.buf.len() >= BATCH_BYTES {
            let _ = sink.writer.clone().write_all(&b.buf);
            b.buf.clear();
        }
        false
    });
    if direct.unwrap_or(true) {
        let mut line = Vec::with_capacity(256);
        sink.format(&mut line, r);
        let _ = sink.writer.clone().write_all(&line);
    }
}

const MESSAGE_DONE: &str = "request";
const MESSAGE_ABORTED: &str = "request aborted before the body was complete";

/// `tracing`'s default text layout: `2026-12-01T17:32:06.362682Z  INFO
/// access: request method=GET path=/v2/… ns="docker.io" status=200 …`,
/// string fields quoted and escaped as `Debug` does.
fn text_line(out: &mut Vec<u8>, r: &Record<'_>) {
    let (level, message) = if r.complete { (" INFO", MESSAGE_DONE) } else { (" WARN", MESSAGE_ABORTED) };
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    let _ = write!(out, "{now} {level} access: {message} method={} path=", r.method);
    escaped_bare(out, r.path);
    let _ = write!(out, " ns={:?} status={} bytes={} latency_ms=", r.ns, r.status, r.bytes);
    millis(out, r.latency);
    let _ = write!(out, " outcome={:?}", r.outcome);
    if let Some(e) = r.error {
        let _ = write!(out, " error={e:?}");
    }
    out.push(b'\n');
}

/// `tracing`'s JSON layout with `flatten_event`: one object per line.
fn json_line(out: &mut Vec<u8>, r: &Record<'_>) {
    let (level, message) = if r.complete { ("INFO", MESSAGE_DONE) } else { ("WARN", MESSAGE_ABORTED) };
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    let _ = write!(out, r#"{{"timestamp":"{now}","level":"{level}","message":"{message}","method":"#);
    json_string(out, r.method);
    out.extend_from_slice(br#","path":"#);
    json_string(out, r.path);
    out.extend_from_slice(br#","ns":"#);
    json_string(out, r.ns);
    let _ = write!(out, r#","status":{},"bytes":{},"latency_ms":"#, r.status, r.bytes);
    millis(out, r.latency);
    out.extend_from_slice(br#","outcome":"#);
    json_string(out, r.outcome);
    if let Some(e) = r.error {
        out.extend_from_slice(br#","error":"#);
        json_string(out, e);
    }
    out.extend_from_slice(b",\"target\":\"access\"}\n");
}

fn millis(out: &mut Vec<u8>, d: Duration) {
    let _ = write!(out, "{}", Millis(d));
}

/// A path as is, but with control characters escaped: hyper only admits
/// visible ASCII in a path, and this keeps it so whatever the source.
fn escaped_bare(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c.is_ascii_graphic()) {
        out.extend_from_slice(s.as_bytes());
    } else {
        let _ = write!(out, "{}", s.escape_debug());
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn through_tracing(r: &Record<'_>) {
    let latency_ms = Millis(r.latency);
    let (method, path, ns, status, bytes, outcome) = (r.method, r.path, r.ns, r.status, r.bytes, r.outcome);
    match (r.error, r.complete) {
        (Some(error), _) => {
            info!(target: "access", method, path, ns, status, bytes, latency_ms = %latency_ms, outcome, error, "{MESSAGE_DONE}")
        }
        (None, true) => {
            info!(target: "access", method, path, ns, status, bytes, latency_ms = %latency_ms, outcome, "{MESSAGE_DONE}")
        }
        (None, false) => {
            warn!(target: "access", method, path, ns, status, bytes, latency_ms = %latency_ms, outcome, "{MESSAGE_ABORTED}")
        }
    }
}

/// Milliseconds with two decimals, from integers (formatting an `f64` was
/// 3 % of a cache hit's CPU).
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:02}", micros / 1000, micros % 1000 / 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(error: Option<&str>, complete: bool) -> Record<'_> {
        Record {
            method: "GET",
            path: "/v2/library/alpine/manifests/latest",
            ns: "docker.io",
            status: 200,
            bytes: 1638,
            latency: Duration::from_micros(2_105),
            outcome: "hit",
            error,
            complete,
        }
    }

    #[test]
    fn text_lines_have_tracings_layout() {
        let mut out = Vec::new();
        text_line(&mut out, &record(None, true));
        let line = String::from_utf8(out).unwrap();
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && time.len() == "2026-12-01T17:32:06.362682Z".len(), "{time}");
        assert_eq!(
            rest,
            " INFO access: request method=GET path=/v2/library/alpine/manifests/latest ns=\"docker.io\" \
             status=200 bytes=1638 latency_ms=2.10 outcome=\"hit\"\n"
        );
        let mut out = Vec::new();
        text_line(&mut out, &record(Some("upstream said \"no\"\n"), false));
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(" WARN access: request aborted before the body was complete method=GET"),
            "{line}"
        );
        assert!(line.ends_with(" error=\"upstream said \\\"no\\\"\\n\"\n"), "escaped as Debug does: {line}");
    }

    #[test]
    fn json_lines_are_objects_with_every_field() {
        let mut out = Vec::new();
        json_line(&mut out, &record(Some("a \"quoted\"\nerror"), true));
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/v2/library/alpine/manifests/latest");
        assert_eq!(v["ns"], "docker.io");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1638);
        assert_eq!(v["latency_ms"].as_f64(), Some(2.1));
        assert_eq!(v["outcome"], "hit");
        assert_eq!(v["error"], "a \"quoted\"\nerror");
        assert_eq!(v["target"], "access");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn control_characters_in_a_path_are_escaped() {
        let mut out = Vec::new();
        escaped_bare(&mut out, "/v2/a\nb");
        assert_eq!(out, b"/v2/a\\nb");
    }
}
