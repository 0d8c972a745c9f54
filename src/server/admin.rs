//! The admin API, on its own port (`admin:`), never the data port: list,
//! load (a background job), prune (dry run unless told otherwise), evict,
//! pin/unpin and statistics as JSON under `/api/v1/`, and the reference
//! server's `/cmd/...` paths (text/plain) for scripts brought along.
//! `GET /cmd/stop` is deliberately not offered.
//!
//! With `adminAuth`, every request needs `Authorization: Bearer <token>`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::cache::catalog::{Catalog, Image, Platforms};
use crate::cache::prune::{ORPHAN_GRACE, Selection};
use crate::cache::{Cache, LoadProgress};
use crate::metrics::{Metrics, ResultLabels};
use crate::oci::{ImageRef, Platform};
use crate::upstream::Window;

/// Load jobs kept for status queries; older ones are forgotten.
const MAX_JOBS: usize = 64;
/// Load jobs running at once; the rest wait their turn (each loads several blobs at once).
const RUNNING_JOBS: usize = 2;
/// The reference's default `count`.
const DEFAULT_COUNT: i64 = 50;

#[derive(Clone)]
struct Admin {
    cache: Cache,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
    jobs: Arc<Mutex<Jobs>>,
    /// `loadWindow`: load jobs wait for it.
    window: Option<Window>,
    running: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct Jobs {
    next: u64,
    by_id: HashMap<u64, Arc<Job>>,
}

struct Job {
    id: u64,
    total: usize,
    bytes: AtomicU64,
    results: Mutex<Vec<Value>>,
}

impl LoadProgress for Job {
    fn arrived(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Job {
    fn status(&self) -> Value {
        let results = self.results.lock().map(|r| r.clone()).unwrap_or_default();
        let failed = results.iter().filter(|r| r["error"].is_string()).count();
        let state = if results.len() < self.total {
            "running"
        } else if failed > 0 {
            "failed"
        } else {
            "done"
        };
        json!({
            "id": self.id, "state": state, "images": self.total, "finished": results.len(),
            "failed": failed, "bytes": self.bytes.load(Ordering::Relaxed), "results": results,
        })
    }
}

pub async fn serve_admin(
    listener: TcpListener,
    cache: Cache,
    metrics: Arc<Metrics>,
    token: Option<String>,
    window: Option<Window>,
) {
    let admin = Admin {
        cache,
        metrics,
        token: token.map(Arc::from),
        jobs: Arc::default(),
        window,
        running: Arc::new(tokio::sync::Semaphore::new(RUNNING_JOBS)),
    };
    let app = Router::new()
        .route("/api/v1/images", get(images))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/load", post(load))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/prune", post(prune))
        .route("/api/v1/evict", post(evict))
        .route("/api/v1/pins", get(pins).post(pin).delete(unpin))
        .route("/cmd/manifest/list", get(cmd_manifest_list))
        .route("/cmd/image/list", get(cmd_image_list))
        .route("/cmd/blob/list", get(cmd_blob_list))
        .route("/cmd/prune", delete(cmd_prune))
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin);
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the admin port stopped");
    }
}

async fn authorize(State(a): State<Admin>, req: Request, next: Next) -> Response {
    if let Some(token) = &a.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            warn!(path = %req.uri().path(), "admin API: request without the right bearer token refused");
            return error(StatusCode::UNAUTHORIZED, "a bearer token is required (adminAuth)").into_response();
        }
    }
    next.run(req).await
}

/// Compares in time independent of where the bytes differ (the length is not secret).
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request the admin API turns down: a status and why, as JSON.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

type Answer = Result<Response, Refusal>;

fn error(status: StatusCode, message: &str) -> Refusal {
    Refusal(status, message.to_owned())
}

fn query(raw: &Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()).into_owned().collect()
}

/// A JSON body's fields; an empty body is `{}`.
fn body(bytes: &Bytes) -> Result<Value, Refusal> {
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")))
}

async fn catalog(a: &Admin) -> Result<Catalog, Refusal> {
    a.cache.catalog().await.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

fn patterns(s: Option<&str>) -> Result<Vec<regex::Regex>, Refusal> {
    Selection::patterns(s.unwrap_or("")).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("pattern: {e}")))
}

async fn images(State(a): State<Admin>, RawQuery(q): RawQuery) -> Answer {
    let q = query(&q);
    let (catalog, patterns) = (catalog(&a).await?, patterns(q.get("pattern").map(String::as_str))?);
    let selection = Selection { patterns, ..Selection::default() };
    let list: Vec<Value> = catalog
        .images
        .iter()
        .filter(|i| selection.matches(i))
        .map(|i| serde_json::to_value(i.summary()).unwrap_or_default())
        .collect();
    Ok(axum::Json(list).into_response())
}

async fn stats(State(a): State<Admin>) -> Answer {
    let s = a.cache.stats();
    let catalog = catalog(&a).await?;
    Ok(axum::Json(json!({
        "images": catalog.images.len(),
        "incomplete": catalog.images.iter().filter(|i| !i.missing.is_empty()).count(),
        "manifests": s.manifests, "blobs": s.blobs, "bytes": catalog.total_bytes(),
        "fillsInFlight": s.fills_in_flight, "pins": a.cache.pins(),
    }))
    .into_response())
}

/// `{"images": ["docker.io/library/alpine:3.20", ...], "platforms": "linux/amd64,linux/arm64"}`:
/// starts a background job and answers 202 with its id.
async fn load(State(a): State<Admin>, raw: Bytes) -> Answer {
    let b = body(&raw)?;
    let mut refs = Vec::new();
    for v in b["images"].as_array().into_iter().flatten() {
        let Some(s) = v.as_str() else {
            return Err(error(StatusCode::BAD_REQUEST, "images: a list of references"));
        };
        match ImageRef::parse(s) {
            Ok(r) => refs.push(r),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, &format!("images: '{s}': {e}"))),
        }
    }
    if refs.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "images: give at least one image reference"));
    }
    let platforms = match b["platforms"].as_str() {
        Some(p) => match Platforms::parse(p) {
            Ok(p) => p,
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, &format!("platforms: {e}"))),
        },
        None => Platforms::Only(vec![Platform::host()]),
    };
    let job = {
        let Ok(mut jobs) = a.jobs.lock() else {
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "job table poisoned"));
        };
        jobs.next += 1;
        let job = Arc::new(Job {
            id: jobs.next,
            total: refs.len(),
            bytes: AtomicU64::new(0),
            results: Mutex::default(),
        });
        if jobs.by_id.len() >= MAX_JOBS
            && let Some(oldest) = jobs.by_id.keys().min().copied()
        {
            jobs.by_id.remove(&oldest);
        }
        jobs.by_id.insert(job.id, job.clone());
        job
    };
    info!(job = job.id, images = refs.len(), %platforms, "admin API: load job started");
    let (cache, metrics, j, window) = (a.cache.clone(), a.metrics.clone(), job.clone(), a.window);
    let running = a.running.clone();
    tokio::spawn(async move {
        let Ok(_turn) = running.acquire_owned().await else { return };
        if let Some(w) = window {
            w.wait_open().await;
        }
        for r in refs {
            let result = match cache.preload(&r, &platforms, 3, j.clone()).await {
                Ok(p) => {
                    json!({ "image": r.to_string(), "digest": p.digest.to_string(), "blobs": p.blobs, "cached": p.cached })
                }
                Err(e) => json!({ "image": r.to_string(), "error": e.to_string() }),
            };
            let outcome = if result["error"].is_string() { "failed" } else { "loaded" };
            metrics.load_images.get_or_create(&ResultLabels { result: outcome }).inc();
            if let Ok(mut results) = j.results.lock() {
                results.push(result);
            }
        }
        info!(job = j.id, "admin API: load job finished");
    });
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "job": job.id, "status": format!("/api/v1/jobs/{}", job.id) })),
    )
        .into_response())
}

async fn job(State(a): State<Admin>, Path(id): Path<u64>) -> Answer {
    let job = a.jobs.lock().ok().and_then(|j| j.by_id.get(&id).cloned());
    match job {
        Some(j) => Ok(axum::Json(j.status()).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "no such job (only the last 64 are kept)")),
    }
}

/// `{"pattern": "...", "olderThan": "30d", "accessedBefore": "7d", "dryRun": false}` (times
/// as durations ago or RFC 3339 dates); a dry run unless `dryRun: false`.
async fn prune(State(a): State<Admin>, raw: Bytes) -> Answer {
    let b = body(&raw)?;
    // A duration (`30d`: that long ago) or an RFC 3339 date.
    let when = |key: &str| -> Result<Option<std::time::SystemTime>, Refusal> {
        b[key]
            .as_str()
            .map(|s| {
                humantime::parse_duration(s)
                    .ok()
                    .and_then(|d| std::time::SystemTime::now().checked_sub(d))
                    .or_else(|| humantime::parse_rfc3339_weak(s).ok())
                    .ok_or_else(|| {
                        error(
                            StatusCode::BAD_REQUEST,
                            &format!("{key}: '{s}' is neither a duration like 30d nor a date"),
                        )
                    })
            })
            .transpose()
    };
    let selection = Selection {
        patterns: patterns(b["pattern"].as_str())?,
        created_before: when("olderThan")?.or(when("createdBefore")?),
        accessed_before: when("accessedBefore")?,
    };
    let dry_run = b["dryRun"].as_bool().unwrap_or(true);
    match a.cache.prune(selection, ORPHAN_GRACE, dry_run).await {
        Ok((plan, done)) => Ok(axum::Json(json!({
            "dryRun": dry_run,
            "images": plan.images.iter().map(Image::name).collect::<Vec<_>>(),
            "manifests": plan.manifests.len(), "blobs": plan.blobs.len(), "bytes": plan.bytes,
            "freed": done.as_ref().map(|d| d.bytes), "errors": done.map(|d| d.errors).unwrap_or_default(),
        }))
        .into_response()),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

/// `{"images": ["registry/repo:tag", ...]}`: removes exactly those images now.
async fn evict(State(a): State<Admin>, raw: Bytes) -> Answer {
    let b = body(&raw)?;
    let names: HashSet<&str> =
        b["images"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if names.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "images: give the names `list` shows"));
    }
    let catalog = catalog(&a).await?;
    let doomed: HashSet<usize> = catalog
        .images
        .iter()
        .enumerate()
        .filter(|(_, i)| names.contains(i.name().as_str()))
        .map(|(n, _)| n)
        .collect();
    let unknown: Vec<&&str> =
        names.iter().filter(|n| !catalog.images.iter().any(|i| i.name() == **n)).collect();
    if !unknown.is_empty() {
        return Err(error(StatusCode::NOT_FOUND, &format!("not in the cache: {unknown:?}")));
    }
    match a.cache.remove(catalog, doomed, Duration::MAX, false).await {
        Ok((plan, done)) => Ok(axum::Json(json!({
            "evicted": plan.images.iter().map(Image::name).collect::<Vec<_>>(),
            "freed": done.map(|d| d.bytes).unwrap_or(0),
        }))
        .into_response()),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

async fn pins(State(a): State<Admin>) -> Answer {
    Ok(axum::Json(json!({ "pins": a.cache.pins() })).into_response())
}

async fn set_pin(a: Admin, raw: Bytes, pin: bool) -> Answer {
    let b = body(&raw)?;
    let Some(glob) = b["pattern"].as_str().filter(|g| !g.is_empty()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "pattern: a glob over registry/repo:tag, like docker.io/library/*:*",
        ));
    };
    match a.cache.set_pin(glob, pin).await {
        Ok(list) => Ok(axum::Json(json!({ "pins": list })).into_response()),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
    }
}

async fn pin(State(a): State<Admin>, raw: Bytes) -> Answer {
    set_pin(a, raw, true).await
}

async fn unpin(State(a): State<Admin>, raw: Bytes) -> Answer {
    set_pin(a, raw, false).await
}

fn text(lines: Vec<String>) -> Answer {
    let mut body = lines.join("\n");
    body.push('\n');
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// `count`: 50 by default, -1 for all.
fn count(q: &HashMap<String, String>) -> Result<usize, Refusal> {
    match q.get("count").map(|c| c.parse::<i64>()) {
        None => Ok(DEFAULT_COUNT as usize),
        Some(Ok(-1)) => Ok(usize::MAX),
        Some(Ok(n)) if n >= 0 => Ok(n as usize),
        _ => Err(error(StatusCode::BAD_REQUEST, "count: a number, or -1 for all")),
    }
}

async fn cmd_manifest_list(State(a): State<Admin>, RawQuery(q): RawQuery) -> Answer {
    let q = query(&q);
    let (catalog, patterns, count) =
        (catalog(&a).await?, patterns(q.get("pattern").map(String::as_str))?, count(&q)?);
    let selection = Selection { patterns, ..Selection::default() };
    let mut lines = Vec::new();
    for i in catalog.images.iter().filter(|i| selection.matches(i)) {
        lines.push(i.name());
        lines.extend(i.manifests.iter().skip(1).map(|d| format!("{}@{d}", i.loc)));
    }
    lines.truncate(count);
    text(lines)
}

async fn cmd_image_list(State(a): State<Admin>, RawQuery(q): RawQuery) -> Answer {
    let q = query(&q);
    let (catalog, patterns, count) =
        (catalog(&a).await?, patterns(q.get("pattern").map(String::as_str))?, count(&q)?);
    let selection = Selection { patterns, ..Selection::default() };
    let digest = q.get("digest").filter(|d| !d.is_empty());
    let mut lines = Vec::new();
    for i in catalog
        .images
        .iter()
        .filter(|i| selection.matches(i))
        .filter(|i| digest.is_none_or(|d| i.blobs.iter().any(|b| b.to_string().contains(d.as_str()))))
        .take(count)
    {
        lines.push(i.name());
        lines.extend(i.blobs.iter().map(|b| format!("  {b}")));
    }
    text(lines)
}

async fn cmd_blob_list(State(a): State<Admin>, RawQuery(q): RawQuery) -> Answer {
    let q = query(&q);
    let (catalog, count) = (catalog(&a).await?, count(&q)?);
    let mut refs: HashMap<String, usize> = HashMap::new();
    for i in &catalog.images {
        for b in &i.blobs {
            *refs.entry(b.to_string()).or_default() += 1;
        }
    }
    let substr = q.get("substr").map(String::as_str).unwrap_or("");
    let mut rows: Vec<(String, usize)> = refs.into_iter().filter(|(d, _)| d.contains(substr)).collect();
    rows.sort();
    text(rows.into_iter().take(count).map(|(d, n)| format!("{d} {n}")).collect())
}

/// The reference's `DELETE /cmd/prune?type=accessed|created|pattern&dur=30d&expr=&count=&dryRun=`
/// (it prunes unless `dryRun=true`, as the reference does).
async fn cmd_prune(State(a): State<Admin>, RawQuery(q): RawQuery) -> Answer {
    let q = query(&q);
    let count = count(&q)?;
    let dur = || {
        let d = q.get("dur").map(String::as_str).unwrap_or("");
        humantime::parse_duration(d).ok().and_then(|d| std::time::SystemTime::now().checked_sub(d))
    };
    let selection = match q.get("type").map(String::as_str) {
        Some("accessed") => Selection { accessed_before: dur(), ..Selection::default() },
        Some("created") => Selection { created_before: dur(), ..Selection::default() },
        Some("pattern") => {
            Selection { patterns: patterns(q.get("expr").map(String::as_str))?, ..Selection::default() }
        }
        _ => return Err(error(StatusCode::BAD_REQUEST, "type: accessed, created or pattern")),
    };
    if selection.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "dur (like 30d) or expr is required"));
    }
    let dry_run = q.get("dryRun").is_some_and(|v| v == "true");
    let catalog = catalog(&a).await?;
    let doomed = selection.pick(&catalog, Some(count));
    match a.cache.remove(catalog, doomed, ORPHAN_GRACE, dry_run).await {
        Ok((plan, done)) => {
            let verb = if dry_run { "would prune" } else { "pruned" };
            let mut lines: Vec<String> = plan.images.iter().map(|i| format!("{verb} {}", i.name())).collect();
            lines.push(format!(
                "{verb} {} images, {} blobs, {} bytes",
                plan.images.len(),
                plan.blobs.len(),
                done.map_or(plan.bytes, |d| d.bytes)
            ));
            text(lines)
        }
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}
