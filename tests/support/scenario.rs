//! The usual arrangement for a test of the mirror: a seeded upstream, the counting
//! proxy in front of it, and the mirror configured to fetch through the proxy.

use super::image::{self, Format, ImageInfo, ImageSpec, Seeded};
use super::mirror::{Mirror, MirrorBuilder, RegistryConfig};
use super::proxy::Proxy;
use super::upstream::Upstream;
use super::{Explain, digest_of, hex_of, http};

/// The registry name clients use for the upstream (skopeo cannot put `host:port`
/// in a path component, so a dotted name is mapped to the proxy's endpoint).
pub const NAME: &str = "up.test";
/// The repository every scenario seeds.
pub const REPO: &str = "team/app";
/// The tag every scenario seeds.
pub const TAG: &str = "v1";

/// Mirror → proxy → upstream, with one image seeded as `team/app:v1`.
///
/// Fields drop in order: the mirror first (its log tail is printed if the test is
/// failing), then the proxy's traffic, then the upstream.
pub struct Scenario {
    pub mirror: Mirror,
    pub proxy: Proxy,
    pub upstream: Upstream,
    pub image: Seeded,
    pub work: tempfile::TempDir,
}

impl Scenario {
    /// Seeds `spec` into `upstream`, starts a proxy in front of it and a mirror that
    /// knows it as [`NAME`] through the proxy; `configure` can add to the mirror's
    /// configuration (it receives the builder with that registry already in it).
    pub fn start(
        upstream: Upstream,
        spec: &ImageSpec,
        format: Format,
        configure: impl FnOnce(MirrorBuilder, &Proxy, &Upstream) -> MirrorBuilder,
    ) -> Scenario {
        let work = super::tempdir("work");
        let image = image::seed(&upstream, &work.path().join("layout"), spec, REPO, TAG, format);
        let proxy = Proxy::start(&upstream);
        let builder = Mirror::builder().registry(RegistryConfig::via_proxy(NAME, &proxy, &upstream));
        let mirror = configure(builder, &proxy, &upstream).start();
        Scenario { mirror, proxy, upstream, image, work }
    }

    /// Plain upstream, `spec` in OCI format, the mirror with `defaultNs: up.test`.
    pub fn plain_default_ns(spec: &ImageSpec) -> Scenario {
        Self::start(Upstream::plain(), spec, Format::Oci, |b, _, _| b.default_ns(NAME))
    }

    /// Everything the scenario's fixtures can tell, for failure messages.
    pub fn context(&self) -> [&dyn Explain; 3] {
        [&self.mirror, &self.proxy, &self.upstream]
    }

    /// A fresh directory under the scenario's work dir.
    pub fn out_dir(&self, name: &str) -> std::path::PathBuf {
        let mut n = 0;
        loop {
            let p = self.work.path().join(format!("{name}-{n}"));
            if !p.exists() {
                return p;
            }
            n += 1;
        }
    }

    /// The true bytes of a blob, from the generated layout the upstream was seeded from.
    pub fn blob_bytes(&self, digest: &str) -> Vec<u8> {
        let layout = self.work.path().join("layout");
        let path = image::find_blob(&layout, digest)
            .unwrap_or_else(|| panic!("blob {digest} is not in the layout {}", layout.display()));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Every file under `<imagePath>/<sub>` (`blobs`, `manifests`, `tags`, `tmp`).
    pub fn cache_files(&self, sub: &str) -> Vec<std::path::PathBuf> {
        super::files_under(&self.mirror.cache_dir().join(sub))
    }

    /// Files under `<imagePath>/<sub>` whose name contains the hex of `digest`.
    pub fn cache_files_named_for(&self, sub: &str, digest: &str) -> Vec<std::path::PathBuf> {
        let hex = hex_of(digest);
        self.cache_files(sub)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(hex)))
            .collect()
    }

    /// The cache path contract for a blob: `<imagePath>/blobs/sha256/<2 hex>/<hex>`.
    pub fn cached_blob_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = hex_of(digest);
        self.mirror.cache_dir().join("blobs").join("sha256").join(&hex[..2]).join(hex)
    }
}

/// Panics unless `got` is byte-for-byte the image `want` describes: same top
/// manifest (digest and media type), same platform manifests, same blobs.
#[track_caller]
pub fn assert_same_image(want: &ImageInfo, got: &ImageInfo, context: &[&dyn Explain]) {
    let ctx = || super::explain_all(context);
    assert_eq!(got.top.digest, want.top.digest, "top manifest digest differs\n{}", ctx());
    assert_eq!(got.top.media_type, want.top.media_type, "top manifest media type differs\n{}", ctx());
    assert_eq!(got.manifest_digests(), want.manifest_digests(), "platform manifests differ\n{}", ctx());
    assert_eq!(got.blobs(), want.blobs(), "blobs differ\n{}", ctx());
}

/// Pulls an image with raw HTTP GETs from the mirror, the way a registry client does:
/// the tag's manifest, each platform manifest by digest, each blob. `name` is the
/// repository as it appears in the path (`team/app` or `up.test/team/app`), `query`
/// is appended to every request (`""` or `"?ns=up.test"`). Every body is checked
/// against its digest (and `Docker-Content-Digest`).
pub fn raw_pull(mirror: &Mirror, name: &str, tag: &str, query: &str) -> ImageInfo {
    let get_manifest = |reference: &str| -> Vec<u8> {
        let url = mirror.v2(&format!("{name}/manifests/{reference}{query}"));
        let r = http::Request::get(&url).accept_manifests().send();
        assert_eq!(r.status, 200, "GET {url}: {}\n{}", r.text(), mirror.explain());
        let d = digest_of(&r.body);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.as_str()),
            "GET {url}: Docker-Content-Digest must be the body's digest"
        );
        if reference.starts_with("sha256:") {
            assert_eq!(d, reference, "GET {url}: body does not match the digest asked for");
        }
        r.body.to_vec()
    };
    let top = get_manifest(tag);
    let info = image::image_info_from(top, |d| get_manifest(d));
    for blob in info.blobs() {
        let url = mirror.v2(&format!("{name}/blobs/{}{query}", blob.digest));
        let r = http::Request::get(&url).send();
        assert_eq!(r.status, 200, "GET {url}: {}\n{}", r.text(), mirror.explain());
        assert_eq!(r.body.len() as u64, blob.size, "GET {url}: wrong length");
        assert_eq!(digest_of(&r.body), blob.digest, "GET {url}: wrong bytes");
    }
    info
}
