//! The S3 backend (`storage.s3`): the cache in an S3-compatible bucket
//! (AWS S3, MinIO, Ceph RGW, Garage, ...), shared by every replica that
//! names it. Keys are `keys.rs`'s; requests go through `bucket.rs`.
//!
//! - Downloads are staged in `imagePath` exactly as the filesystem backend
//!   stages them (resumable, `flock`ed), then uploaded whole once verified:
//!   a blob in the bucket is always complete and always what its digest says.
//! - Blobs and manifests are created, never replaced: a manifest (and any
//!   blob up to [`SINGLE_PUT`]) with `If-None-Match: *`; a larger blob, whose
//!   multipart upload S3 cannot make conditional, only after a HEAD finds it
//!   absent. Two replicas racing there upload the same verified bytes, and S3
//!   makes either upload visible whole, so a reader sees one or the other.
//! - Tags, pins and the generation are small objects replaced whole (an S3
//!   PUT is atomic); links and pull times are one object each (see `s3_keys.rs`).
//!
//! The [`Store`] seam is blocking (the cache calls it from the blocking
//! pool); requests run on a small runtime of the store's own, so a call can
//! be made from any thread, async or not, and never starves the server's
//! workers.

mod bucket;
mod hot;
mod keys;
mod lease;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectMeta, RetryConfig};
use tracing::warn;

use self::bucket::{Bucket, Connector, S3Blob, SINGLE_PUT, copy_blob, runtime};
use self::hot::Hot;
use self::keys::Keys;
use super::fs::FsStore;
use super::{
    Claim, Committed, Listing, Partial, ReadAt, Skipped, Store, StoredManifest, StoredTag, manifest_bytes,
    parse_manifest, unix_secs,
};
use crate::cache::Locator;
use crate::oci::{Digest, RegistryHost, RepoName, Tag};
use crate::upstream::ClientTls;

/// `storage.s3`, resolved.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Keys go under this (`/`-separated; may be empty).
    pub prefix: String,
    /// `None`: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Access key ID and secret from the variables the configuration names;
    /// `None` leaves the AWS chain (environment, web identity, ECS, IMDS).
    pub credentials: Option<(String, String)>,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    pub tls: ClientTls,
    pub peers: Option<Peers>,
    /// `localCacheSize`: the most the local disk tier holds (`hot.rs`); 0: none.
    pub local_cache_size: u64,
    /// `redirect`: blob GETs answered with a presigned URL of the bucket.
    pub redirect: bool,
}

/// `storage.s3.peers`: replicas stream downloads in progress to each other.
#[derive(Clone)]
pub struct Peers {
    /// The port this replica serves its downloads in progress on.
    pub port: u16,
    /// Where the others reach that port (`http://10.0.0.5:5003`).
    pub advertise: String,
    /// The bearer token every replica presents and requires (the same for all).
    pub token: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.credentials.as_ref().map(|(id, _)| (id, "<secret>")))
            .field("path_style", &self.path_style)
            .field("peers", &self.peers.as_ref().map(|p| (p.port, &p.advertise, "<token>")))
            .finish()
    }
}

/// How long a presigned blob URL stays valid: long enough for a slow pull to
/// start every layer, short enough that a leaked one soon stops working.
const PRESIGNED_FOR: Duration = Duration::from_secs(600);

pub struct S3Store {
    redirect: bool,
    bucket: Arc<Bucket>,
    keys: Keys,
    holder: lease::Holder,
    /// Downloads in progress, and what only concerns this machine.
    staging: Arc<FsStore>,
    /// The local disk tier: hot blobs in `staging`'s `blobs/`.
    hot: Option<Arc<Hot>>,
}

impl S3Store {
    /// Connects lazily: nothing is sent until [`Store::prepare`].
    pub fn new(s: &S3Settings, local: &std::path::Path) -> anyhow::Result<S3Store> {
        let tls = crate::upstream::tls::client_config(&s.tls, &crate::upstream::tls::base_roots())
            .context("storage.s3.tls")?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("ociregistry/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("storage.s3: building the HTTP client")?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&s.bucket)
            .with_virtual_hosted_style_request(!s.path_style)
            .with_http_connector(Connector(client))
            // A bucket that does not answer is a 503 for the client in
            // seconds, not a request hanging through minutes of retries.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
                ..Default::default()
            });
        if let Some(region) = &s.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &s.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some((id, secret)) = &s.credentials {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        let objects = builder.build().context("storage.s3")?;
        let name = format!("s3://{}/{}", s.bucket, s.prefix.trim_matches('/'));
        Ok(S3Store {
            redirect: s.redirect,
            bucket: Arc::new(Bucket { objects, runtime: runtime()?, name }),
            keys: Keys::new(&s.prefix),
            holder: lease::Holder {
                owner: format!("{:016x}", rand::random::<u64>()),
                peer: s.peers.as_ref().map(|p| p.advertise.clone()),
            },
            staging: Arc::new(FsStore::new(local.join("staging"))),
            hot: (s.local_cache_size > 0).then(|| Hot::new(s.local_cache_size)),
        })
    }

    /// Copies a blob just read from the bucket into the local tier, in the
    /// background, checked against its digest on the way.
    fn copy_to_hot(&self, hot: &Arc<Hot>, d: &Digest, len: u64) {
        if !hot.start_copy(d) {
            return;
        }
        let (bucket, key, tier, hot, d) =
            (self.bucket.clone(), self.keys.blob(d), self.staging.clone(), hot.clone(), d.clone());
        let runtime = bucket.runtime.clone();
        runtime.spawn_blocking(move || {
            if let Err(e) = copy_blob(&bucket, &key, &tier, &d, len) {
                tracing::debug!(digest = %d, error = %e, "copying a blob to the local disk tier failed");
            } else {
                hot.added(&tier, &d, len);
            }
            hot.copied(&d);
        });
    }

    fn quarantine(&self, from: &Key, d: &Digest, suffix: &str) -> std::io::Result<()> {
        self.bucket.copy(from, &self.keys.quarantined(d, suffix))?;
        self.bucket.delete(from)
    }

    fn skipped(&self, key: &Key, why: impl Into<String>, digest: Option<Digest>) -> Skipped {
        Skipped { what: format!("{}/{key}", self.bucket.name), why: why.into(), digest }
    }

    /// Lists `prefix`, or one skipped entry saying why it could not be.
    fn list_or_skip(&self, prefix: &Key) -> Result<Vec<ObjectMeta>, Skipped> {
        self.bucket.list(prefix).map_err(|e| self.skipped(prefix, e.to_string(), None))
    }

    fn read_tags(&self, metas: Vec<ObjectMeta>) -> Listing<StoredTag> {
        let keys: Vec<Key> = metas.iter().map(|m| m.location.clone()).collect();
        let modified: std::collections::HashMap<Key, SystemTime> =
            metas.into_iter().map(|m| (m.location, m.last_modified.into())).collect();
        let got = match self.bucket.get_all(keys) {
            Ok(got) => got,
            Err(e) => return vec![Err(self.skipped(&self.keys.top("tags"), e.to_string(), None))],
        };
        got.into_iter()
            .filter_map(|(key, body)| {
                let body = match body {
                    Ok(Some(b)) => b,
                    Ok(None) => return None,
                    Err(why) => return Some(Err(self.skipped(&key, why, None))),
                };
                let Some((loc, tag)) = self.keys.tag_of(&key) else {
                    return Some(Err(self.skipped(&key, "not a tag", None)));
                };
                let fallback = modified.get(&key).copied().unwrap_or(SystemTime::UNIX_EPOCH);
                Some(parse_tag(&body, fallback).map_err(|why| self.skipped(&key, why, None)).map(
                    |(digest, checked)| StoredTag {
                        registry: loc.registry,
                        repo: loc.repo,
                        tag,
                        digest,
                        checked,
                    },
                ))
            })
            .collect()
    }

    fn read_links(&self, prefix: &Key) -> Listing<(Locator, Digest, Option<u64>)> {
        match self.list_or_skip(prefix) {
            Ok(metas) => metas
                .iter()
                .map(|m| {
                    self.keys
                        .link_of(&m.location)
                        .ok_or_else(|| self.skipped(&m.location, "not a link", None))
                })
                .collect(),
            Err(s) => vec![Err(s)],
        }
    }

    /// The pull-time keys of one reference, with their times.
    fn pull_keys(&self, loc: &Locator, reference: &str) -> std::io::Result<Vec<(Key, u64)>> {
        let metas = self.bucket.list(&self.keys.pulls_of(loc, reference))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| Some((m.location.clone(), self.keys.pull_of(&m.location)?.2)))
            .collect())
    }
}

/// A tag object: `<digest>\n<unix seconds checked>` (the time may be missing:
/// then the object's own time says when).
fn parse_tag(body: &[u8], modified: SystemTime) -> Result<(Digest, SystemTime), String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let mut lines = text.lines();
    let digest = Digest::parse(lines.next().unwrap_or("").trim()).map_err(|e| e.to_string())?;
    let checked = match lines.next().map(str::trim).filter(|l| !l.is_empty()) {
        Some(secs) => {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.parse().map_err(|_| "a torn time line")?)
        }
        None => modified,
    };
    Ok((digest, checked))
}

fn tag_body(d: &Digest, checked: SystemTime) -> String {
    format!("{d}\n{}\n", unix_secs(checked))
}

impl Store for S3Store {
    fn prepare(&self) -> anyhow::Result<()> {
        self.staging.prepare().context("storage.s3: the staging directory in imagePath")?;
        if let Some(hot) = &self.hot {
            hot.load(&self.staging);
        }
        let probe = self.keys.probe();
        self.bucket.put(&probe, Bytes::new(), false).and_then(|_| self.bucket.delete(&probe)).with_context(
            || format!("storage.s3: cannot write to {} (bucket, endpoint, credentials?)", self.bucket.name),
        )
    }

    fn open_blob(&self, d: &Digest) -> std::io::Result<Option<(Arc<dyn ReadAt>, u64)>> {
        if let Some(found) = self.hot.as_ref().and_then(|hot| hot.open(&self.staging, d)) {
            return Ok(Some(found));
        }
        let key = self.keys.blob(d);
        let Some(meta) = self.bucket.head(&key)? else { return Ok(None) };
        if let Some(hot) = &self.hot {
            self.copy_to_hot(hot, d, meta.size);
        }
        Ok(Some((Arc::new(S3Blob { bucket: self.bucket.clone(), key, len: meta.size }), meta.size)))
    }

    fn blob_len(&self, d: &Digest) -> std::io::Result<Option<u64>> {
        Ok(self.bucket.head(&self.keys.blob(d))?.map(|m| m.size))
    }

    fn begin_blob(&self, d: &Digest) -> std::io::Result<Option<Partial>> {
        if self.blob_len(d)?.is_some() {
            return Ok(None);
        }
        self.staging.begin_blob(d)
    }

    fn downloading_elsewhere(&self, d: &Digest) -> bool {
        self.staging.downloading_elsewhere(d)
    }

    fn begin_anonymous(&self) -> std::io::Result<Partial> {
        self.staging.begin_anonymous()
    }

    fn commit_blob(&self, p: &Partial, d: &Digest, len: u64) -> std::io::Result<Committed> {
        let key = self.keys.blob(d);
        let committed = if self.blob_len(d)? == Some(len) {
            Committed::AlreadyThere
        } else {
            let uploaded = if len <= SINGLE_PUT {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; len as usize];
                p.file.read_exact_at(&mut buf, 0)?;
                self.bucket.put(&key, buf, true)
            } else {
                self.bucket.upload(&key, &p.file, len).map(|()| true)
            };
            match uploaded {
                Ok(true) => Committed::Created,
                Ok(false) => Committed::AlreadyThere,
                // A server may refuse a conditional create before reading the
                // body, which then reads as a broken connection; or another
                // replica's upload won meanwhile. Either way it is there.
                Err(e) => match self.blob_len(d) {
                    Ok(Some(there)) if there == len => Committed::AlreadyThere,
                    _ => return Err(e),
                },
            }
        };
        // Verified and local already: the tier keeps it, if there is one.
        if let Some(hot) = &self.hot
            && self.staging.commit_blob(p, d, len).is_ok()
        {
            hot.added(&self.staging, d, len);
            return Ok(committed);
        }
        self.staging.abandon_blob(p, false);
        Ok(committed)
    }

    fn abandon_blob(&self, p: &Partial, keep: bool) {
        self.staging.abandon_blob(p, keep);
    }

    fn quarantine_blob(&self, d: &Digest) -> std::io::Result<()> {
        if let Some(hot) = &self.hot {
            hot.remove(&self.staging, d);
        }
        self.quarantine(&self.keys.blob(d), d, "")
    }

    fn remove_blob(&self, d: &Digest) -> std::io::Result<()> {
        if let Some(hot) = &self.hot {
            hot.remove(&self.staging, d);
        }
        self.bucket.delete(&self.keys.blob(d))
    }

    fn blobs(&self) -> Vec<(Digest, u64)> {
        match self.bucket.list(&self.keys.top("blobs")) {
            Ok(metas) => metas
                .iter()
                .filter_map(|m| Some((self.keys.digest_of(&m.location, "blobs")?, m.size)))
                .collect(),
            Err(e) => {
                warn!(error = %e, "listing the bucket's blobs failed");
                Vec::new()
            }
        }
    }

    fn blob_stored_at(&self, d: &Digest) -> Option<SystemTime> {
        Some(self.bucket.head(&self.keys.blob(d)).ok()??.last_modified.into())
    }

    fn put_manifest(&self, m: &StoredManifest) -> std::io::Result<()> {
        self.bucket.put(&self.keys.manifest(&m.digest), manifest_bytes(m), true).map(|_| ())
    }

    fn manifests(&self) -> Listing<StoredManifest> {
        let metas = match self.list_or_skip(&self.keys.top("manifests")) {
            Ok(metas) => metas,
            Err(s) => return vec![Err(s)],
        };
        let keys = metas.into_iter().map(|m| m.location).collect();
        let got = match self.bucket.get_all(keys) {
            Ok(got) => got,
            Err(e) => return vec![Err(self.skipped(&self.keys.top("manifests"), e.to_string(), None))],
        };
        got.into_iter()
            .filter_map(|(key, body)| {
                let Some(d) = self.keys.digest_of(&key, "manifests") else {
                    return Some(Err(self.skipped(&key, "not named by a digest", None)));
                };
                match body {
                    Ok(Some(raw)) => {
                        Some(parse_manifest(raw, &d).map_err(|why| self.skipped(&key, why, Some(d))))
                    }
                    Ok(None) => None,
                    Err(why) => Some(Err(self.skipped(&key, why, Some(d)))),
                }
            })
            .collect()
    }

    fn manifest(&self, d: &Digest) -> Result<Option<StoredManifest>, Skipped> {
        let key = self.keys.manifest(d);
        match self.bucket.get(&key) {
            Ok(Some((raw, _))) => {
                parse_manifest(raw, d).map(Some).map_err(|why| self.skipped(&key, why, Some(d.clone())))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.skipped(&key, e.to_string(), Some(d.clone()))),
        }
    }

    fn quarantine_manifest(&self, d: &Digest) -> std::io::Result<()> {
        self.quarantine(&self.keys.manifest(d), d, ".manifest")
    }

    fn remove_manifest(&self, d: &Digest) -> std::io::Result<()> {
        self.bucket.delete(&self.keys.manifest(d))
    }

    fn manifest_stored_at(&self, d: &Digest) -> Option<SystemTime> {
        Some(self.bucket.head(&self.keys.manifest(d)).ok()??.last_modified.into())
    }

    fn put_tag(
        &self,
        registry: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        d: &Digest,
    ) -> std::io::Result<()> {
        self.bucket
            .put(&self.keys.tag(registry, repo, tag), tag_body(d, SystemTime::now()), false)
            .map(|_| ())
    }

    fn touch_tag(
        &self,
        registry: &RegistryHost,
        repo: &RepoName,
        tag: &Tag,
        at: SystemTime,
    ) -> std::io::Result<()> {
        let key = self.keys.tag(registry, repo, tag);
        let Some((body, meta)) = self.bucket.get(&key)? else {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no tag {key}")));
        };
        let (d, _) = parse_tag(&body, meta.last_modified.into()).map_err(std::io::Error::other)?;
        self.bucket.put(&key, tag_body(&d, at), false).map(|_| ())
    }

    fn tags(&self) -> Listing<StoredTag> {
        match self.list_or_skip(&self.keys.top("tags")) {
            Ok(metas) => self.read_tags(metas),
            Err(s) => vec![Err(s)],
        }
    }

    fn repo_tags(&self, loc: &Locator) -> Listing<StoredTag> {
        match self.list_or_skip(&self.keys.tags_of(loc)) {
            Ok(metas) => self.read_tags(metas),
            Err(s) => vec![Err(s)],
        }
    }

    fn remove_tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> std::io::Result<()> {
        self.bucket.delete(&self.keys.tag(registry, repo, tag))
    }

    fn add_links(&self, loc: &Locator, entries: &[(Digest, Option<u64>)]) -> std::io::Result<()> {
        for (d, size) in entries {
            self.bucket.put(&self.keys.link(loc, d, *size), Bytes::new(), false)?;
        }
        Ok(())
    }

    fn links(&self) -> Listing<(Locator, Digest, Option<u64>)> {
        self.read_links(&self.keys.top("links"))
    }

    fn repo_links(&self, loc: &Locator) -> Listing<(Digest, Option<u64>)> {
        self.read_links(&self.keys.links_of(loc))
            .into_iter()
            // A nested repository's links are under this one's prefix too.
            .filter(|l| l.as_ref().map_or(true, |(l, ..)| l == loc))
            .map(|l| l.map(|(_, d, size)| (d, size)))
            .collect()
    }

    fn unlink(&self, loc: &Locator, digests: &[Digest]) -> std::io::Result<()> {
        let mut keys = Vec::new();
        for d in digests {
            keys.extend(
                self.bucket.list(&self.keys.links_of_digest(loc, d))?.into_iter().map(|m| m.location),
            );
        }
        self.bucket.delete_all(keys)
    }

    fn record_pulls(&self, loc: &Locator, pulls: &[(String, SystemTime)]) -> std::io::Result<()> {
        for (reference, at) in pulls {
            let secs = unix_secs(*at);
            let earlier = self.pull_keys(loc, reference)?;
            if earlier.iter().any(|(_, s)| *s >= secs) {
                continue;
            }
            self.bucket.put(&self.keys.pull(loc, reference, secs), Bytes::new(), false)?;
            self.bucket.delete_all(earlier.into_iter().map(|(k, _)| k).collect())?;
        }
        Ok(())
    }

    fn pulls(&self) -> Listing<(Locator, String, SystemTime)> {
        let metas = match self.list_or_skip(&self.keys.top("pulled")) {
            Ok(metas) => metas,
            Err(s) => return vec![Err(s)],
        };
        // Two replicas may each have left a time: the latest wins.
        let mut latest: std::collections::BTreeMap<(Locator, String), u64> = Default::default();
        for m in &metas {
            if let Some((loc, reference, secs)) = self.keys.pull_of(&m.location) {
                let at = latest.entry((loc, reference)).or_default();
                *at = (*at).max(secs);
            }
        }
        latest
            .into_iter()
            .map(|((loc, r), secs)| Ok((loc, r, SystemTime::UNIX_EPOCH + Duration::from_secs(secs))))
            .collect()
    }

    fn forget_pulls(&self, loc: &Locator, references: &[String]) -> std::io::Result<()> {
        let mut keys = Vec::new();
        for r in references {
            keys.extend(self.pull_keys(loc, r)?.into_iter().map(|(k, _)| k));
        }
        self.bucket.delete_all(keys)
    }

    /// Held on this machine only: an import on another replica is not seen
    /// by this one's prune yet (a lease in the bucket will be).
    fn hold_blobs(&self) -> std::io::Result<Box<dyn Send>> {
        self.staging.hold_blobs()
    }

    fn blobs_held(&self) -> bool {
        self.staging.blobs_held()
    }

    fn pins(&self) -> Vec<String> {
        match self.bucket.get(&self.keys.pins()) {
            Ok(Some((body, _))) => String::from_utf8_lossy(&body)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "reading the pinned globs from the bucket failed");
                Vec::new()
            }
        }
    }

    fn set_pins(&self, pins: &[String]) -> std::io::Result<()> {
        let text: String = pins.iter().map(|p| format!("{p}\n")).collect();
        self.bucket.put(&self.keys.pins(), text, false).map(|_| ())
    }

    fn generation(&self) -> u64 {
        match self.bucket.get(&self.keys.generation()) {
            Ok(Some((body, _))) => {
                std::str::from_utf8(&body).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
            }
            _ => 0,
        }
    }

    fn bump_generation(&self) -> std::io::Result<()> {
        // Random, not a counter: two commands bumping at once still change it.
        let next: u64 = rand::random();
        self.bucket.put(&self.keys.generation(), next.to_string(), false).map(|_| ())
    }

    fn sweep_partials(&self) -> (usize, u64) {
        self.staging.sweep_partials()
    }

    fn blob_url(&self, d: &Digest) -> std::io::Result<Option<String>> {
        use object_store::signer::Signer;
        if !self.redirect {
            return Ok(None);
        }
        let (b, key) = (self.bucket.clone(), self.keys.blob(d));
        let url = self
            .bucket
            .run(async move { b.objects.signed_url(http::Method::GET, &key, PRESIGNED_FOR).await })?;
        Ok(Some(url.map_err(|e| self.bucket.io(e))?.to_string()))
    }

    fn claim_pruning(&self) -> std::io::Result<Option<Box<dyn Send + Sync>>> {
        match lease::claim(&self.bucket, &self.keys.pruning_lease(), &self.holder, false)? {
            Claim::Ours(held) => Ok(Some(held)),
            Claim::Elsewhere { .. } => Ok(None),
        }
    }

    fn claim_fill(&self, d: &Digest, take_over: bool) -> std::io::Result<Claim> {
        lease::claim(&self.bucket, &self.keys.lease(d), &self.holder, take_over)
    }
}
