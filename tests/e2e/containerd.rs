//! containerd, the client the mirror exists for: `ctr image pull` through a
//! `certs.d/_default/hosts.toml` mirror entry, then unpack into snapshots.

use crate::support::containerd::Containerd;
use crate::support::image::{self, Format, ImageSpec};
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::proxy::Proxy;
use crate::support::scenario::{NAME, REPO, Scenario, TAG};
use crate::support::upstream::Upstream;
use crate::support::{Explain, tempdir};

/// Pulls `up.test/team/app:v1` with ctr through the mirror and checks the result:
/// the image's digest is the upstream's, it is complete and unpacked, and each layer
/// of the pulled platform was downloaded from the upstream once.
fn ctr_pull_and_check(s: &Scenario) -> Containerd {
    let ctrd = Containerd::start(&s.mirror.url());
    let reference = format!("{NAME}/{REPO}:{TAG}");
    ctrd.pull(&reference, &s.context());
    let amd64 = if s.image.info.is_index() {
        s.image.info.manifest_for("linux/amd64").clone()
    } else {
        s.image.info.manifests[0].clone()
    };
    ctrd.assert_unpacked(&reference, amd64.layers.len(), &s.context());
    assert_eq!(
        ctrd.image_digest(&reference, &s.context()),
        s.image.info.top.digest,
        "containerd's image should have the upstream's digest"
    );
    for layer in &amd64.layers {
        assert_eq!(
            s.proxy.count_ok("GET", &format!("/blobs/{}", layer.digest)),
            1,
            "layer {} should have been downloaded from the upstream once\n{}",
            layer.digest,
            s.proxy.explain()
        );
    }
    ctrd
}

#[test]
fn ctr_pull_oci_index_through_mirror_unpacks() {
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::multi_platform(201, &[3000, 400_000]),
        Format::Oci,
        |b, _, _| b,
    );
    ctr_pull_and_check(&s);
}

#[test]
fn ctr_pull_docker_media_types_through_mirror_unpacks() {
    let s = Scenario::start(
        Upstream::plain(),
        &ImageSpec::single(202, &[3000, 400_000]),
        Format::Docker,
        |b, _, _| b,
    );
    ctr_pull_and_check(&s);
}

#[test]
fn ctr_pull_from_bearer_upstream_through_mirror() {
    // containerd is anonymous to the mirror; the mirror holds the credentials.
    let s = Scenario::start(
        Upstream::bearer(),
        &ImageSpec::multi_platform(203, &[3000, 100_000]),
        Format::Oci,
        |b, _, _| b,
    );
    ctr_pull_and_check(&s);
    let token = s.upstream.token_server().expect("token server");
    assert!(token.issued() > 0, "the mirror should have fetched a token");
}

#[test]
fn ctr_pull_host_port_reference_through_mirror() {
    // The image reference names the registry as 127.0.0.1:PORT; containerd sends it
    // as `?ns=127.0.0.1%3APORT` (or unencoded) and the mirror must pick that registry.
    let up = Upstream::plain();
    let work = tempdir("work");
    let seeded =
        image::seed(&up, work.path(), &ImageSpec::single(204, &[3000, 100_000]), REPO, TAG, Format::Oci);
    let proxy = Proxy::start(&up);
    let mirror = Mirror::builder().registry(RegistryConfig::new(&proxy.host_port()).scheme("http")).start();
    let ctrd = Containerd::start(&mirror.url());
    let reference = format!("{}/{REPO}:{TAG}", proxy.host_port());
    let ctx: [&dyn Explain; 3] = [&mirror, &proxy, &up];
    ctrd.pull(&reference, &ctx);
    ctrd.assert_unpacked(&reference, seeded.info.manifests[0].layers.len(), &ctx);
    assert_eq!(ctrd.image_digest(&reference, &ctx), seeded.info.top.digest);
    assert!(
        proxy.count_ok("GET", "/blobs/") >= 2,
        "the blobs should come through the registry named by the reference"
    );
}

/// `serve --hello-world`: with no upstream at all, containerd pulls the built-in
/// image through the mirror and runs it (the quick start's "verify" step offline).
#[test]
fn hello_world_runs_with_no_upstream() {
    let mirror = Mirror::builder().extra_yaml("helloWorld: true\nallowUnconfigured: false").start();
    let ctrd = Containerd::start(&mirror.url());
    let reference = "docker.io/library/hello-world:latest";
    ctrd.pull(reference, &[&mirror]);
    let out = ctrd.ctr(["run", "--rm", reference, "hello-e2e"], &[&mirror]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Hello from ociregistry!"), "the container should greet:\n{stdout}");
    assert!(mirror.log().contains("installed the built-in hello-world image"));
}

/// The README's quick start on a real containerd, through the CRI image service
/// (the kubelet's path): `config_path` + `certs.d/_default/hosts.toml` exactly as
/// the README writes them, `docker.io` mapped to a local upstream with the
/// registry `endpoint` setting, and `hello-world:latest` pulled twice: one
/// upstream pull, then cache hits only.
#[test]
fn quick_start_cri_pull_then_cache_hits() {
    let upstream = Upstream::plain();
    let work = tempdir("quick-start");
    image::seed(
        &upstream,
        &work.path().join("layout"),
        &ImageSpec::single(951, &[2000, 40_000]),
        "library/hello-world",
        "latest",
        Format::Docker,
    );
    let proxy = Proxy::start(&upstream);
    let mirror = Mirror::builder()
        .registry(RegistryConfig::new("docker.io").endpoint(&proxy.url()))
        .extra_yaml("allowUnconfigured: false")
        .start();
    let hosts = format!(
        "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
        mirror.url()
    );
    // What `kubectl run hello-world --image docker.io/hello-world:latest` asks for.
    let image = "docker.io/library/hello-world:latest";
    for round in ["first", "second"] {
        let ctrd = Containerd::start(&mirror.url());
        ctrd.set_hosts_toml(
            "_default",
            &format!("server = \"http://127.0.0.1:{}\"\n\n{hosts}", crate::support::dead_port()),
        );
        let cri = crate::support::cri::Cri::connect(ctrd.socket());
        let mark = mirror.log_mark();
        let image_ref = cri.pull(image).unwrap_or_else(|e| {
            panic!("{round} pull: {e}\n{}", crate::support::explain_all(&[&mirror, &proxy]))
        });
        assert!(image_ref.starts_with("sha256:"), "{round} pull returned {image_ref}");
        let log = mirror.log_since(mark);
        let upstream_pulls = log.matches("pulling manifest from upstream").count();
        match round {
            "first" => {
                assert_eq!(upstream_pulls, 1, "the first pull fetches the tag's manifest once:\n{log}")
            }
            _ => {
                assert_eq!(upstream_pulls, 0, "the second pull must not go upstream:\n{log}");
                let hit = |l: &&str| {
                    l.contains("/manifests/")
                        && crate::support::logs::field_value(l, "outcome").as_deref() == Some("hit")
                };
                assert!(log.lines().any(|l| hit(&l)), "no manifest served with outcome=hit:\n{log}");
                assert!(!log.contains("pulling blob from upstream"), "blobs fetched again:\n{log}");
            }
        }
    }
}
