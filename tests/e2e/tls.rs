//! TLS to the upstream beyond a custom CA: a client certificate for an upstream
//! that requires one (mTLS, `tls.cert`/`tls.key`), and `insecureSkipVerify` for one
//! whose certificate the mirror cannot verify. When the TLS connection cannot be
//! made, the client gets a clean OCI error, never an empty 500.

use crate::support::http;
use crate::support::image::{self, Format, ImageSpec, Seeded};
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::scenario::{NAME, REPO, TAG, assert_same_image};
use crate::support::skopeo::Skopeo;
use crate::support::upstream::Upstream;
use crate::support::{explain_all, tempdir};

/// What a mirror that cannot make the TLS connection may answer.
const CLEAN_TLS_FAILURES: &[(u16, &str)] = &[(503, "UNAVAILABLE"), (403, "DENIED")];

/// Seeds `up` with a two-platform image as `team/app:v1`.
fn seed(up: &Upstream, work: &tempfile::TempDir, seed: u64) -> Seeded {
    image::seed(
        up,
        &work.path().join("layout"),
        &ImageSpec::multi_platform(seed, &[1000, 200_000]),
        REPO,
        TAG,
        Format::Oci,
    )
}

/// skopeo pulls `team/app:v1` through `mirror` and gets exactly `seeded`.
fn assert_pulls(mirror: &Mirror, up: &Upstream, seeded: &Seeded, work: &tempfile::TempDir) {
    let out = work.path().join(format!("pull-{}", mirror.port()));
    let got =
        Skopeo::new().context(mirror).context(up).pull_via_mirror(mirror, &format!("{REPO}:{TAG}"), &out);
    assert_same_image(&seeded.info, &got, &[mirror, up]);
}

/// The manifest and a blob of `seeded` through `mirror` each fail with one of
/// [`CLEAN_TLS_FAILURES`] in the OCI envelope; so does a skopeo pull.
#[track_caller]
fn assert_clean_failure(mirror: &Mirror, up: &Upstream, seeded: &Seeded, why: &str) {
    let layer = seeded.info.largest_layer();
    for path in [format!("{REPO}/manifests/{TAG}"), format!("{REPO}/blobs/{}", layer.digest)] {
        let r = http::Request::get(&mirror.v2(&path)).accept_manifests().send();
        let clean = CLEAN_TLS_FAILURES
            .iter()
            .any(|(status, code)| r.oci_error_mismatch(*status, Some(code)).is_none());
        assert!(
            clean,
            "GET /v2/{path} ({why}): wanted 503 UNAVAILABLE or 403 DENIED in the OCI envelope, \
             got {} {:?}{}\n{}",
            r.status,
            r.text(),
            if r.status == 500 && r.body.is_empty() { " (an empty 500)" } else { "" },
            explain_all(&[mirror, up])
        );
    }
    let out = tempdir("pull");
    let o = Skopeo::new().try_run(&[
        "copy".to_string(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/{REPO}:{TAG}", mirror.host_port()),
        format!("dir:{}", out.path().display()),
    ]);
    assert!(
        !o.status.success(),
        "skopeo pulled through the mirror although {why}\n{}",
        explain_all(&[mirror, up])
    );
}

#[test]
fn mtls_upstream_with_client_certificate() {
    // docker-registry with `http.tls.clientcas: [ca.pem]`: no client certificate, no TLS.
    let up = Upstream::mtls();
    let work = tempdir("work");
    let seeded = seed(&up, &work, 1001);

    // tls: {ca, cert, key}
    let with_cert = RegistryConfig::direct(NAME, &up);
    assert!(with_cert.cert.is_some() && with_cert.key.is_some());
    let mirror = Mirror::builder().registry(with_cert.clone()).default_ns(NAME).start();
    assert_pulls(&mirror, &up, &seeded, &work);

    // tls: {ca} only
    let bare = Mirror::builder().registry(with_cert.without_client_cert()).default_ns(NAME).start();
    assert_clean_failure(
        &bare,
        &up,
        &seeded,
        "the upstream requires a client certificate and none is configured",
    );
}

#[test]
fn insecure_skip_verify_upstream() {
    // A certificate from a CA the mirror is not told about.
    let up = Upstream::tls();
    let work = tempdir("work");
    let seeded = seed(&up, &work, 1002);
    let untrusted = RegistryConfig::direct(NAME, &up).without_ca();

    let verifying = Mirror::builder().registry(untrusted.clone()).default_ns(NAME).start();
    assert_clean_failure(&verifying, &up, &seeded, "the upstream's certificate is not trusted");

    let skipping = Mirror::builder().registry(untrusted.insecure_skip_verify(true)).default_ns(NAME).start();
    assert_pulls(&skipping, &up, &seeded, &work);
}
