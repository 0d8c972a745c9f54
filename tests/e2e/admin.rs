//! The admin API on its own port (`admin:`), with a bearer token (`adminAuth.tokenFile`):
//! kept off the data port and closed without the token; the JSON API (images, load
//! jobs, prune, evict, pins); the reference server's `/cmd/...` text paths; the
//! commands' `--server`; and `upstreamBandwidth`, which holds the link to its rate and
//! lets a client's download overtake a background load job.
//!
//! Every request here goes to the real binary; the upstream is `docker-registry`
//! behind the counting proxy, and clients pull with skopeo.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::cli::CliRun;
use crate::support::cli::{full, seed};
use crate::support::http::Request;
use crate::support::image::{ImageSpec, Seeded};
use crate::support::mirror::{Mirror, MirrorBuilder, RegistryConfig, binary};
use crate::support::proxy::{Fault, Proxy};
use crate::support::scenario::{NAME, assert_same_image};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{Explain, command_line, explain_all, free_port, hex_of, run, tempdir, wait_until};

/// The admin token (at least 16 characters).
const TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// A fresh directory under `work`.
fn fresh(work: &Path, name: &str) -> PathBuf {
    let mut n = 0;
    loop {
        let p = work.join(format!("{name}-{n}"));
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// Pulls `image` with skopeo through `mirror` (in-path name) and checks it is the upstream's.
fn pull(mirror: &Mirror, image: &Seeded, work: &Path, context: &[&dyn Explain]) {
    let got = Skopeo::new().context(mirror).pull_via_mirror(mirror, &full(image), &fresh(work, "pull"));
    assert_same_image(&image.info, &got, context);
}

/// Status of `GET /v2/up.test/<repo>/manifests/<tag>` through the mirror.
fn manifest_status(mirror: &Mirror, image: &Seeded) -> u16 {
    mirror
        .request("GET", &format!("/v2/{NAME}/{}/manifests/{}", image.repo, image.tag))
        .accept_manifests()
        .send()
        .status
}

/// `<cache>/blobs/sha256/<2 hex>/<hex>`.
fn cached_blob(cache: &Path, digest: &str) -> PathBuf {
    let hex = hex_of(digest);
    cache.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// The bytes of an image's blobs (config and layers).
fn image_bytes(image: &Seeded) -> u64 {
    image.info.blobs().iter().map(|b| b.size).sum()
}

/// The admin port of a mirror, and how to ask it things.
struct Admin {
    port: u16,
}

impl Admin {
    /// A free port for `admin:`; with `adminAuth.tokenFile` holding [`TOKEN`] (in `dir`),
    /// added to `builder`'s configuration.
    fn configure(builder: MirrorBuilder, dir: &Path) -> (MirrorBuilder, Admin) {
        let token_file = dir.join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("writing the admin token file");
        let port = free_port();
        let yaml = format!(
            "admin: {port}\nadminAuth: {{tokenFile: {}}}\n",
            serde_json::to_string(&token_file.display().to_string()).expect("a JSON string")
        );
        (builder.extra_yaml(&yaml), Admin { port })
    }

    /// `http://127.0.0.1:ADMIN`.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A request to the admin port with the right token.
    fn request(&self, method: &str, path: &str) -> Request {
        self.bare(method, path).header("authorization", &format!("Bearer {TOKEN}"))
    }

    /// A request to the admin port without a token.
    fn bare(&self, method: &str, path: &str) -> Request {
        Request::new(method, &format!("{}{path}", self.url()))
    }

    /// A JSON request with the token; panics unless the status is `want`; the JSON answer.
    #[track_caller]
    fn call(&self, method: &str, path: &str, body: Option<Value>, want: u16, ctx: &dyn Explain) -> Value {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send();
        assert_eq!(resp.status, want, "{method} {path}: {}\n{}", resp.text(), ctx.explain());
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}\n{}", resp.text(), ctx.explain()))
    }

    /// `GET /api/v1/images`: the names listed, with whether each is complete.
    fn images(&self, ctx: &dyn Explain) -> Vec<(String, bool)> {
        let v = self.call("GET", "/api/v1/images", None, 200, ctx);
        v.as_array()
            .unwrap_or_else(|| panic!("GET /api/v1/images: not a list: {v:#}"))
            .iter()
            .map(|i| (i["name"].as_str().unwrap_or_default().to_string(), i["complete"] == Value::Bool(true)))
            .collect()
    }

    fn names(&self, ctx: &dyn Explain) -> BTreeSet<String> {
        self.images(ctx).into_iter().map(|(n, _)| n).collect()
    }

    /// `POST /api/v1/load`; the job's status path.
    fn load(&self, images: &[String], ctx: &dyn Explain) -> String {
        let started = self.call(
            "POST",
            "/api/v1/load",
            Some(json!({"images": images, "platforms": "linux/amd64"})),
            202,
            ctx,
        );
        assert!(started["job"].is_u64(), "202 without a job id: {started:#}");
        let path =
            started["status"].as_str().unwrap_or_else(|| panic!("202 without a status path: {started:#}"));
        assert_eq!(path, format!("/api/v1/jobs/{}", started["job"]), "{started:#}");
        path.to_string()
    }

    /// Polls a job until it is no longer `running` (at most `timeout`); its last status.
    fn wait_job(&self, path: &str, timeout: Duration, ctx: &dyn Explain) -> Value {
        let mut last = Value::Null;
        let ended = wait_until(timeout, || {
            last = self.call("GET", path, None, 200, ctx);
            last["state"] != "running"
        });
        assert!(ended, "the load job still runs after {timeout:?}: {last:#}\n{}", ctx.explain());
        last
    }

    /// `GET` on the admin port with the token, as text; panics unless 200 with `text/plain`.
    #[track_caller]
    fn text(&self, method: &str, path: &str, ctx: &dyn Explain) -> Vec<String> {
        let r = self.request(method, path).send();
        assert_eq!(r.status, 200, "{method} {path}: {}\n{}", r.text(), ctx.explain());
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "{method} {path}: Content-Type {ct:?}, wanted text/plain");
        r.text().lines().filter(|l| !l.is_empty()).map(String::from).collect()
    }
}

/// Upstream, proxy and a mirror with the admin port, fetching [`NAME`] through the proxy.
struct Site {
    mirror: Mirror,
    admin: Admin,
    proxy: Proxy,
    up: Upstream,
    work: tempfile::TempDir,
}

impl Site {
    fn start(prefix: &str, seed_images: impl FnOnce(&Upstream, &Path), yaml: &str) -> Site {
        let up = Upstream::plain();
        let work = tempdir(prefix);
        seed_images(&up, work.path());
        let proxy = Proxy::start(&up);
        let builder =
            Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &proxy, &up)).extra_yaml(yaml);
        let (builder, admin) = Admin::configure(builder, work.path());
        let mirror = builder.start();
        Site { mirror, admin, proxy, up, work }
    }

    fn w(&self) -> &Path {
        self.work.path()
    }
}

impl Explain for Site {
    fn explain(&self) -> String {
        explain_all(&[&self.mirror, &self.proxy])
    }
}

#[test]
fn admin_api_requires_its_token_and_stays_off_the_data_port() {
    let site = Site::start("admin-auth", |_, _| {}, "");
    let (mirror, admin) = (&site.mirror, &site.admin);

    // No token, a wrong token (also one differing only in its last character), a
    // token without "Bearer ": 401 with a JSON error.
    let wrong_last = format!("Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    for (what, header) in [
        ("no token", None),
        ("a wrong token", Some("Bearer not-the-admin-token-at-all".to_string())),
        ("a token wrong in its last character", Some(wrong_last)),
        ("the token without Bearer", Some(TOKEN.to_string())),
        ("Basic credentials", Some(crate::support::mirror::basic_auth("admin", TOKEN))),
    ] {
        for path in ["/api/v1/stats", "/api/v1/images", "/cmd/manifest/list"] {
            let mut r = admin.bare("GET", path);
            if let Some(h) = &header {
                r = r.header("authorization", h);
            }
            let r = r.send();
            assert_eq!(r.status, 401, "GET {path} with {what}: {}\n{}", r.text(), mirror.explain());
            let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                panic!("GET {path} with {what}: the 401 is not JSON ({e}): {}", r.text())
            });
            assert!(v["error"].is_string(), "GET {path} with {what}: no \"error\" in {v}");
        }
    }
    // Writes are refused too, and do nothing.
    let r = admin.bare("POST", "/api/v1/pins").body(r#"{"pattern":"*"}"#).send();
    assert_eq!(r.status, 401, "POST /api/v1/pins without the token: {}", r.text());
    assert!(
        !site.mirror.cache_dir().join("pinned").exists()
            || std::fs::read_to_string(site.mirror.cache_dir().join("pinned"))
                .unwrap_or_default()
                .trim()
                .is_empty(),
        "a refused POST /api/v1/pins must not pin anything"
    );
    assert!(
        mirror.wait_for_log(
            "admin API: request without the right bearer token refused",
            Duration::from_secs(5)
        ),
        "refusals should be logged\n{}",
        mirror.explain()
    );

    // The right token: 200 and the statistics.
    let stats = admin.call("GET", "/api/v1/stats", None, 200, mirror);
    for key in ["images", "manifests", "blobs", "bytes", "pins"] {
        assert!(stats.get(key).is_some(), "GET /api/v1/stats: no {key:?} in {stats:#}");
    }
    assert_eq!(stats["images"], json!(0), "{stats:#}");
    assert_eq!(stats["pins"], json!([]), "{stats:#}");

    // Not on the data port, token or not.
    for path in ["/api/v1/stats", "/api/v1/images", "/cmd/manifest/list"] {
        for token in [false, true] {
            let mut r = mirror.request("GET", path);
            if token {
                r = r.header("authorization", &format!("Bearer {TOKEN}"));
            }
            let r = r.send();
            let oci_error = r.oci_error_mismatch(r.status, None).is_none();
            assert!(
                r.status == 404 || (r.status >= 400 && oci_error),
                "GET {path} on the DATA port must not be served (got {}: {})",
                r.status,
                r.text()
            );
            assert!(
                !r.text().contains("\"manifests\""),
                "GET {path} on the data port answered stats: {}",
                r.text()
            );
        }
    }
    let r = mirror.request("POST", "/api/v1/load").body(r#"{"images":["up.test/team/app:v1"]}"#).send();
    assert!(r.status >= 400, "POST /api/v1/load on the data port: {} {}", r.status, r.text());

    // GET /cmd/stop is not offered, with the token either.
    for method in ["GET", "POST", "DELETE"] {
        let r = admin.request(method, "/cmd/stop").send();
        assert!(
            r.status == 404 || r.status == 405,
            "{method} /cmd/stop on the admin port: {} {}",
            r.status,
            r.text()
        );
    }
    let mut mirror = site.mirror;
    assert!(mirror.is_running(), "the mirror should still run\n{}", mirror.explain());
}

#[test]
fn admin_api_lists_loads_prunes_evicts_and_pins() {
    let mut images = Vec::new();
    // A cap of 2.6 of the largest image, down to 2.3 (see the pins below).
    let site = {
        let up = Upstream::plain();
        let work = tempdir("admin-api");
        for (n, repo) in ["team/app", "team/pinned", "team/idle", "team/newer"].iter().enumerate() {
            images.push(seed(
                &up,
                work.path(),
                &ImageSpec::single(4100 + n as u64, &[1000, 300_000]),
                repo,
                "v1",
            ));
        }
        let unit = images.iter().map(image_bytes).max().expect("images");
        let proxy = Proxy::start(&up);
        let builder = Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &proxy, &up)).extra_yaml(
            &format!("cacheSize: {{max: \"{}\", target: \"{}\"}}\n", unit * 26 / 10, unit * 23 / 10),
        );
        let (builder, admin) = Admin::configure(builder, work.path());
        let mirror = builder.start();
        Site { mirror, admin, proxy, up, work }
    };
    let [app, pinned, idle, newer] = [&images[0], &images[1], &images[2], &images[3]];
    let Site { mut mirror, admin, proxy, up: _up, work } = site;
    let w = work.path();
    let cache = mirror.cache_dir().to_path_buf();

    // Load: a background job, followed to its end.
    let job = admin.load(&[full(app)], &mirror);
    let status = admin.wait_job(&job, Duration::from_secs(60), &mirror);
    assert_eq!(status["state"], "done", "{status:#}");
    assert_eq!(status["images"], json!(1), "{status:#}");
    assert_eq!(status["results"][0]["image"], json!(full(app)), "{status:#}");
    assert_eq!(status["results"][0]["digest"], json!(app.info.top.digest), "{status:#}");
    assert!(status["bytes"].as_u64().unwrap_or(0) >= image_bytes(app) - 1000, "{status:#}");
    assert!(
        admin.images(&mirror).contains(&(full(app), true)),
        "GET /api/v1/images should list {} complete\n{}",
        full(app),
        mirror.explain()
    );
    let r = admin.request("GET", &format!("/api/v1/images?pattern={}", "team/idle")).send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "[]", "a pattern that matches nothing lists nothing");
    // It was loaded whole: with the upstream cut, a client pulls it.
    proxy.set_fault(Fault::Refuse);
    pull(&mirror, app, w, &[&mirror, &proxy]);
    proxy.set_fault(Fault::None);

    // Prune without dryRun is a dry run: named, nothing removed.
    let pruned = admin.call("POST", "/api/v1/prune", Some(json!({"pattern": "team/app"})), 200, &mirror);
    assert_eq!(pruned["dryRun"], json!(true), "{pruned:#}");
    assert_eq!(pruned["images"], json!([full(app)]), "{pruned:#}");
    assert!(admin.names(&mirror).contains(&full(app)), "a dry run removed {}", full(app));
    for blob in app.info.blobs() {
        assert!(cached_blob(&cache, &blob.digest).exists(), "a dry run removed blob {}", blob.digest);
    }

    // Evict: exactly that image, now.
    let r = admin
        .request("POST", "/api/v1/evict")
        .body(json!({"images": [format!("{NAME}/team/never:v1")]}).to_string())
        .send();
    assert_eq!(r.status, 404, "evicting what is not cached: {}", r.text());
    let evicted = admin.call("POST", "/api/v1/evict", Some(json!({"images": [full(app)]})), 200, &mirror);
    assert_eq!(evicted["evicted"], json!([full(app)]), "{evicted:#}");
    assert!(!admin.names(&mirror).contains(&full(app)), "{} is still listed after evict", full(app));
    for blob in app.info.blobs() {
        assert!(!cached_blob(&cache, &blob.digest).exists(), "blob {} stays after evict", blob.digest);
    }
    proxy.set_fault(Fault::Refuse);
    assert_ne!(
        manifest_status(&mirror, app),
        200,
        "{} is served after evict with the upstream cut",
        full(app)
    );
    proxy.set_fault(Fault::None);

    // Pins: added, kept across a restart.
    let glob = format!("{NAME}/team/pinned:*");
    let pins = admin.call("POST", "/api/v1/pins", Some(json!({"pattern": glob})), 200, &mirror);
    assert_eq!(pins["pins"], json!([glob]), "{pins:#}");
    let r = admin.request("POST", "/api/v1/pins").body(r#"{"pattern":"a["}"#).send();
    assert_eq!(r.status, 400, "a bad glob: {}", r.text());
    mirror.restart();
    let pins = admin.call("GET", "/api/v1/pins", None, 200, &mirror);
    assert_eq!(pins["pins"], json!([glob]), "the pin should outlive a restart: {pins:#}");

    // And it holds under the size cap: pinned (least recently pulled), idle, newer;
    // the third needs room, and idle goes, not the pinned one.
    for image in [pinned, idle, newer] {
        pull(&mirror, image, w, &[&mirror, &proxy]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let names = admin.names(&mirror);
    assert!(names.contains(&full(pinned)), "the pinned image was evicted: {names:?}\n{}", mirror.explain());
    assert!(names.contains(&full(newer)), "{names:?}\n{}", mirror.explain());
    assert!(!names.contains(&full(idle)), "the unpinned, least recently pulled image should go: {names:?}");

    // Unpinned again: DELETE.
    let pins = admin.call("DELETE", "/api/v1/pins", Some(json!({"pattern": glob})), 200, &mirror);
    assert_eq!(pins["pins"], json!([]), "{pins:#}");
}

#[test]
fn reference_cmd_paths_answer_text() {
    let mut images = Vec::new();
    let site = Site::start(
        "admin-cmd",
        |up, w| {
            // 60 layers: more blobs than the default count of 50.
            images.push(seed(up, w, &ImageSpec::single(4201, &[64; 60]), "team/many", "v1"));
            images.push(seed(up, w, &ImageSpec::single(4202, &[1000, 50_000]), "team/one", "v1"));
            images.push(seed(up, w, &ImageSpec::multi_platform(4203, &[1000, 20_000]), "team/multi", "v1"));
        },
        "",
    );
    let [many, one, multi] = [&images[0], &images[1], &images[2]];
    let (mirror, admin) = (&site.mirror, &site.admin);
    for image in [many, one, multi] {
        pull(mirror, image, site.w(), &[&site]);
    }
    let all_blobs: BTreeSet<String> = images.iter().flat_map(|i| i.info.blobs()).map(|b| b.digest).collect();
    assert!(all_blobs.len() > 50, "the test needs more than 50 blobs");

    // Manifests: each image by name, an index's children as repo@digest.
    let lines = admin.text("GET", "/cmd/manifest/list", &site);
    let mut want: BTreeSet<String> = [many, one, multi].iter().map(|i| full(i)).collect();
    for m in &multi.info.manifests {
        want.insert(format!("{NAME}/{}@{}", multi.repo, m.descriptor.digest));
    }
    assert_eq!(lines.iter().cloned().collect::<BTreeSet<_>>(), want, "GET /cmd/manifest/list: {lines:#?}");
    assert_eq!(lines.len(), want.len(), "no duplicates: {lines:#?}");
    let lines = admin.text("GET", "/cmd/manifest/list?pattern=team/multi", &site);
    assert_eq!(lines.len(), 3, "the index and its two children: {lines:#?}");
    assert_eq!(lines[0], full(multi), "the image first: {lines:#?}");
    assert_eq!(admin.text("GET", "/cmd/manifest/list?count=1", &site).len(), 1);

    // Images with their blobs, by pattern and by blob digest.
    let lines = admin.text("GET", "/cmd/image/list?pattern=team/one", &site);
    let mut want = vec![full(one)];
    let mut blob_lines: Vec<String> = one.info.blobs().iter().map(|b| format!("  {}", b.digest)).collect();
    blob_lines.sort();
    let mut got_blobs = lines[1..].to_vec();
    got_blobs.sort();
    assert_eq!(lines[0], want[0], "GET /cmd/image/list?pattern=team/one: {lines:#?}");
    assert_eq!(got_blobs, blob_lines, "the image's blobs, one per line: {lines:#?}");
    want.extend(blob_lines);
    let layer = one.info.largest_layer();
    let by_digest =
        admin.text("GET", &format!("/cmd/image/list?digest={}", &hex_of(&layer.digest)[..16]), &site);
    assert_eq!(by_digest[0], full(one), "the image using that blob: {by_digest:#?}");
    assert_eq!(by_digest.len(), want.len(), "only that image: {by_digest:#?}");

    // Blobs with how many images use each; count 50 by default, -1 for all.
    let lines = admin.text("GET", "/cmd/blob/list", &site);
    assert_eq!(lines.len(), 50, "count is 50 by default ({} blobs cached)", all_blobs.len());
    let lines = admin.text("GET", "/cmd/blob/list?count=-1", &site);
    let listed: BTreeSet<String> =
        lines.iter().map(|l| l.split(' ').next().unwrap_or_default().to_string()).collect();
    assert_eq!(listed, all_blobs, "count=-1 lists every blob: {lines:#?}");
    assert!(lines.iter().all(|l| l.ends_with(" 1")), "each blob is used by one image: {lines:#?}");
    let lines =
        admin.text("GET", &format!("/cmd/blob/list?substr={}&count=1", &hex_of(&layer.digest)[..12]), &site);
    assert_eq!(lines, vec![format!("{} 1", layer.digest)], "substr picks the blob");
    assert_eq!(
        admin.text("GET", "/cmd/blob/list?substr=sha256&count=1", &site).len(),
        1,
        "count=1: one line"
    );
    let r = admin.request("GET", "/cmd/blob/list?count=lots").send();
    assert_eq!(r.status, 400, "a count that is not a number: {}", r.text());

    // Prune, the reference's way: a dry run when asked, else for real.
    let lines = admin.text("DELETE", "/cmd/prune?type=pattern&expr=team/one&dryRun=true", &site);
    assert_eq!(lines[0], format!("would prune {}", full(one)), "{lines:#?}");
    assert!(
        lines.last().is_some_and(|l| l.starts_with("would prune 1 images")),
        "a summary line: {lines:#?}"
    );
    assert!(
        admin.text("GET", "/cmd/manifest/list", &site).contains(&full(one)),
        "dryRun=true removed {}",
        full(one)
    );
    let r = admin.request("DELETE", "/cmd/prune?type=sometimes").send();
    assert_eq!(r.status, 400, "an unknown type: {}", r.text());
    let lines = admin.text("DELETE", "/cmd/prune?type=pattern&expr=team/one", &site);
    assert_eq!(lines[0], format!("pruned {}", full(one)), "{lines:#?}");
    assert!(lines.last().is_some_and(|l| l.starts_with("pruned 1 images")), "{lines:#?}");
    let left = admin.text("GET", "/cmd/manifest/list?count=-1", &site);
    assert!(!left.contains(&full(one)), "{} is still listed: {left:#?}", full(one));
    assert!(left.contains(&full(many)) && left.contains(&full(multi)), "only team/one goes: {left:#?}");
    for blob in one.info.blobs() {
        assert!(!cached_blob(mirror.cache_dir(), &blob.digest).exists(), "blob {} stays", blob.digest);
    }
    site.proxy.set_fault(Fault::Refuse);
    assert_ne!(
        manifest_status(mirror, one),
        200,
        "{} is served after a prune with the upstream cut",
        full(one)
    );
    pull(mirror, many, site.w(), &[&site]);
}

/// `ociregistry ARGS…` with `OCIREGISTRY_ADMIN_TOKEN` set to `token` (or unset).
fn cli(args: &[&str], token: Option<&str>) -> CliRun {
    let mut cmd = Command::new(binary());
    cmd.args(args).env("RUST_BACKTRACE", "1").env_remove("OCIREGISTRY_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("OCIREGISTRY_ADMIN_TOKEN", t);
    }
    let command = command_line(&cmd);
    let out = run(&mut cmd);
    CliRun {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn cli_commands_use_a_running_server() {
    let mut images = Vec::new();
    let site = Site::start(
        "admin-cli",
        |up, w| {
            images.push(seed(up, w, &ImageSpec::single(4301, &[1000, 100_000]), "team/pulled", "v1"));
            images.push(seed(up, w, &ImageSpec::single(4302, &[1000, 150_000]), "team/loaded", "v1"));
        },
        "",
    );
    let [pulled, loaded] = [&images[0], &images[1]];
    let (mirror, url) = (&site.mirror, site.admin.url());
    let token = Some(TOKEN);
    pull(mirror, pulled, site.w(), &[&site]);

    // list --server --json: the server's images, as list --json shows a directory's.
    let list = |token| {
        let r = cli(&["list", "--server", &url, "--json"], token).ok(&[&site]);
        let json = r.json();
        json.as_array()
            .unwrap_or_else(|| panic!("not a list: {json:#}"))
            .iter()
            .map(|i| i["name"].as_str().unwrap_or_default().to_string())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(list(token), BTreeSet::from([full(pulled)]));

    // load --server: the server does it (its log says so), the command reports it.
    let mark = mirror.log_mark();
    let r = cli(&["load", "--server", &url, "--platform", "linux/amd64", &full(loaded)], token).ok(&[&site]);
    assert!(r.stdout.contains(&format!("loaded {}", full(loaded))), "{}", r.explain());
    assert!(r.stdout.contains(&loaded.info.top.digest), "the digest loaded: {}", r.explain());
    assert!(
        mirror.wait_for_log_since(mark, "admin API: load job started", Duration::from_secs(5)),
        "the server should have run the load\n{}",
        mirror.explain()
    );
    assert!(
        site.proxy.count_ok("GET", &format!("{}/manifests/", loaded.repo)) > 0,
        "{}",
        site.proxy.explain()
    );
    assert_eq!(list(token), BTreeSet::from([full(pulled), full(loaded)]));

    // prune --server --dry-run: names it, removes nothing.
    let r = cli(&["prune", "--server", &url, "--pattern", "team/loaded", "--dry-run"], token).ok(&[&site]);
    assert!(r.stdout.contains(&format!("would remove {}", full(loaded))), "{}", r.explain());
    assert!(!r.stdout.contains("team/pulled"), "{}", r.explain());
    assert_eq!(list(token), BTreeSet::from([full(pulled), full(loaded)]), "a dry run removed something");

    // Without the token: a clear error that says where the token comes from.
    for args in [
        vec!["list", "--server", url.as_str()],
        vec!["prune", "--server", url.as_str(), "--pattern", "team/loaded", "--dry-run"],
        vec!["load", "--server", url.as_str(), &full(pulled)],
    ] {
        let r = cli(&args, None).fails(&[&site]);
        assert!(
            r.stderr.contains("OCIREGISTRY_ADMIN_TOKEN"),
            "`{}` without the token should name OCIREGISTRY_ADMIN_TOKEN:\n{}",
            args.join(" "),
            r.explain()
        );
    }
    let r = cli(&["list", "--server", &url], Some("a-wrong-token-of-some-length")).fails(&[&site]);
    assert!(r.stderr.contains("OCIREGISTRY_ADMIN_TOKEN"), "{}", r.explain());
    assert_eq!(list(token).len(), 2, "nothing changed");
}

/// Bytes per second over the proxy's GETs whose path contains `path_part`: their body
/// bytes over the time from the first request to the last body byte.
fn upstream_rate(proxy: &Proxy, path_part: &str) -> (u64, f64) {
    let seen = proxy.matching("GET", path_part);
    let bytes: u64 = seen.iter().map(|r| r.body_bytes).sum();
    let start = seen.iter().map(|r| r.started).min().expect("requests seen");
    let end = seen.iter().filter_map(|r| r.finished).max().expect("finished requests");
    (bytes, end.duration_since(start).as_secs_f64())
}

#[test]
fn bandwidth_cap_holds_and_clients_go_first() {
    const MIB: f64 = (1 << 20) as f64;
    let mut images = Vec::new();
    let site = Site::start(
        "admin-bandwidth",
        |up, w| {
            images.push(seed(up, w, &ImageSpec::single(4401, &[1000, 4 << 20]), "bw/four", "v1"));
            images.push(seed(up, w, &ImageSpec::single(4402, &[1000, 6 << 20]), "bw/big", "v1"));
            images.push(seed(up, w, &ImageSpec::single(4403, &[1000, 1 << 20]), "bw/small", "v1"));
        },
        "upstreamBandwidth: 1MiB/s\n",
    );
    let [four, big, small] = [&images[0], &images[1], &images[2]];
    let (mirror, admin, proxy) = (&site.mirror, &site.admin, &site.proxy);

    // (a) A client's pull of a 4 MiB layer arrives whole, at 1 MiB/s (a generous
    // 1.3 allowed for the burst), and the upstream sends it no faster. The proxy
    // keeps a small send buffer, so what it counts as sent is what crossed to the
    // mirror, not what its own kernel holds back.
    let layer = four.info.largest_layer();
    proxy.set_send_buffer(Some(64 << 10));
    let started = Instant::now();
    pull(mirror, four, site.w(), &[&site]);
    let took = started.elapsed().as_secs_f64();
    let client_rate = layer.size as f64 / took / MIB;
    assert!(
        client_rate <= 1.3,
        "upstreamBandwidth 1MiB/s: the client got the layer at {client_rate:.2} MiB/s ({took:.2}s)\n{}",
        site.explain()
    );
    let (bytes, secs) = upstream_rate(proxy, &format!("/blobs/{}", layer.digest));
    assert!(
        bytes >= layer.size,
        "the proxy passed {bytes} of the layer's {} bytes\n{}",
        layer.size,
        proxy.explain()
    );
    let upstream_rate = bytes as f64 / secs / MIB;

    // (b) A load job fetches a 6 MiB layer in the background; a client's pull of
    // another image, started once the job is taking in bytes, finishes first.
    let job = admin.load(&[full(big)], mirror);
    let mut status = Value::Null;
    let fetching = wait_until(Duration::from_secs(20), || {
        status = admin.call("GET", &job, None, 200, mirror);
        status["bytes"].as_u64().unwrap_or(0) > 0
    });
    assert!(
        fetching && status["state"] == "running",
        "the load job should be fetching the big layer: {status:#}\n{}",
        site.explain()
    );
    let client_started = Instant::now();
    pull(mirror, small, site.w(), &[&site]);
    let client_took = client_started.elapsed();
    let during = admin.call("GET", &job, None, 200, mirror);
    assert_eq!(
        during["state"],
        "running",
        "the client's pull ({client_took:?}) should finish before the background load: {during:#}\n{}",
        site.explain()
    );
    let done = admin.wait_job(&job, Duration::from_secs(60), mirror);
    assert_eq!(done["state"], "done", "{done:#}");
    let job_took = client_started.elapsed();
    eprintln!(
        "bandwidth: 4 MiB layer at {client_rate:.2} MiB/s to the client, {upstream_rate:.2} MiB/s from the upstream \
         ({bytes} bytes in {secs:.2}s); small pull {client_took:.2?} during the load, load done {job_took:.2?} after it began"
    );
    for blob in big.info.blobs() {
        assert!(cached_blob(mirror.cache_dir(), &blob.digest).exists(), "blob {} not loaded", blob.digest);
    }

    // Last, so that the rest is checked in the same run: the upstream's side of the link.
    assert!(
        upstream_rate <= 1.3,
        "upstreamBandwidth 1MiB/s: the upstream sent the 4 MiB layer at {upstream_rate:.2} MiB/s ({bytes} bytes \
         in {secs:.2}s) while the client got it at {client_rate:.2} MiB/s: the mirror paces what it reads, but its \
         socket's receive buffer takes the blob at full speed\n{}",
        site.explain()
    );
}
