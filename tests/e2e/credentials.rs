//! Upstream credentials the way clusters keep them, against the real
//! `docker-registry` (htpasswd or token auth): a Docker config.json /
//! Kubernetes `.dockerconfigjson` (re-read when it is rotated), an exec
//! credential helper (`docker-credential-*` protocol, asked once and cached),
//! a static bearer token (no token exchange), and `OCIREGISTRY_*` environment
//! variables standing in for config keys.

use std::path::Path;
use std::time::Duration;

use base64::Engine;

use crate::support::cli::seed;
use crate::support::http;
use crate::support::image::ImageSpec;
use crate::support::mirror::{Mirror, RegistryConfig};
use crate::support::scenario::{NAME, REPO, TAG, raw_pull};
use crate::support::upstream::Upstream;
use crate::support::{Explain, tempdir, wait_until};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `NAME` served from `up` with no `auth` of its own.
fn anonymous(up: &Upstream) -> RegistryConfig {
    let mut r = RegistryConfig::direct(NAME, up);
    r.auth = None;
    r
}

fn manifest_status(mirror: &Mirror) -> (u16, String) {
    let r = http::Request::get(&mirror.v2(&format!("{REPO}/manifests/{TAG}?ns={NAME}")))
        .accept_manifests()
        .send();
    (r.status, r.text())
}

fn write_executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, script).expect("writing the helper script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("making the helper executable");
}

/// A `dockerConfig` in the `.dockerconfigjson` format logs in to an htpasswd
/// upstream; a wrong password is refused with an error that says so, and a
/// Secret rotated in place is used without a restart.
#[test]
fn docker_config_json_logs_in_and_is_reread_when_rotated() {
    let up = Upstream::basic();
    let work = tempdir("credentials");
    seed(&up, work.path(), &ImageSpec::single(3101, &[1200, 30_000]), REPO, TAG);
    let (user, password) = up.credentials().expect("a basic upstream has credentials");
    let config = work.path().join(".dockerconfigjson");
    let write = |pw: &str| {
        let json = format!(
            r#"{{"auths": {{"https://{NAME}/v2/": {{"auth": "{}"}}}}}}"#,
            b64(&format!("{user}:{pw}"))
        );
        // Written aside then renamed, as the kubelet swaps a Secret's files.
        let tmp = work.path().join("tmp.json");
        std::fs::write(&tmp, json).expect("writing the docker config");
        std::fs::rename(&tmp, &config).expect("renaming the docker config");
    };
    write("wrong-password");
    let mirror = Mirror::builder()
        .registry(anonymous(&up))
        .extra_yaml(&format!(
            "dockerConfig: {}\n",
            serde_json::to_string(&config.display().to_string()).unwrap()
        ))
        .start();
    let (status, body) = manifest_status(&mirror);
    assert!(status == 401 || status == 403 || status == 502, "a wrong password is refused: {status} {body}");
    assert!(body.to_lowercase().contains("denied") || body.contains("credentials"), "{body}");

    write(password);
    let healed = wait_until(Duration::from_secs(20), || manifest_status(&mirror).0 == 200);
    assert!(healed, "the rotated file is read again without a restart\n{}", mirror.explain());
    raw_pull(&mirror, REPO, TAG, &format!("?ns={NAME}"));
    assert!(mirror.log().contains("dockerConfig changed"), "the operator is told the credentials changed");
}

/// `auth.credentialHelper` runs the helper with `get` and the registry on
/// its standard input, once for many requests; `credsStore` in a
/// `dockerConfig` finds `docker-credential-<name>` on PATH. A helper that
/// fails is named in the log.
#[test]
fn credential_helper_is_asked_once_and_cached() {
    let up = Upstream::basic();
    let work = tempdir("credentials");
    seed(&up, work.path(), &ImageSpec::single(3102, &[900, 20_000, 40_000]), REPO, TAG);
    let (user, password) = up.credentials().expect("a basic upstream has credentials");
    let calls = work.path().join("calls.log");
    let helper = work.path().join("docker-credential-e2e");
    write_executable(
        &helper,
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread server\necho \"$server\" >> '{}'\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n",
            calls.display()
        ),
    );

    let r = anonymous(&up).raw(&format!("    auth:\n      credentialHelper: {}\n", helper.display()));
    let mirror = Mirror::builder().registry(r).start();
    raw_pull(&mirror, REPO, TAG, &format!("?ns={NAME}"));
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        asked.lines().collect::<Vec<_>>(),
        vec![NAME],
        "asked once, about {NAME}\n{}",
        mirror.explain()
    );

    // credsStore: the helper by name, found on PATH.
    let config = work.path().join("config.json");
    std::fs::write(&config, r#"{"credsStore": "e2e"}"#).expect("writing config.json");
    let path = format!("{}:{}", work.path().display(), std::env::var("PATH").unwrap_or_default());
    let store = Mirror::builder()
        .registry(anonymous(&up))
        .env("PATH", &path)
        .extra_yaml(&format!(
            "dockerConfig: {}\n",
            serde_json::to_string(&config.display().to_string()).unwrap()
        ))
        .start();
    raw_pull(&store, REPO, TAG, &format!("?ns={NAME}"));
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap_or_default().lines().count(),
        2,
        "credsStore asked it once"
    );

    // A helper that fails: the client is refused, the log names the helper and what it said.
    let broken = work.path().join("docker-credential-broken");
    write_executable(&broken, "#!/bin/sh\necho 'token expired: run aws sso login' >&2\nexit 1\n");
    let r = anonymous(&up).raw(&format!("    auth:\n      credentialHelper: {}\n", broken.display()));
    let mirror = Mirror::builder().registry(r).start();
    let (status, _) = manifest_status(&mirror);
    assert_ne!(status, 200);
    assert!(
        mirror.wait_for_log("token expired: run aws sso login", Duration::from_secs(5))
            && mirror.log().contains("docker-credential-broken"),
        "the log names the helper and what it said\n{}",
        mirror.explain()
    );
}

/// `auth.token` is sent as a bearer token to the registry itself: the pull
/// works with no request to the token server; `tokenFromEnv` reads it from
/// the environment.
#[test]
fn static_bearer_token_needs_no_token_exchange() {
    let up = Upstream::bearer();
    let work = tempdir("credentials");
    seed(&up, work.path(), &ImageSpec::single(3103, &[700, 25_000]), REPO, TAG);
    let tokens = up.token_server().expect("bearer mode has a token server");
    let (user, password) = up.credentials().expect("the token server wants credentials");
    let minted = http::Request::get(&format!(
        "{}?service={}&scope=repository:{REPO}:pull",
        tokens.realm(),
        tokens.service()
    ))
    .header("authorization", &crate::support::mirror::basic_auth(user, password))
    .send();
    assert_eq!(minted.status, 200, "{}", minted.text());
    let token = serde_json::from_slice::<serde_json::Value>(&minted.body).expect("token JSON")["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    tokens.reset();

    let mut r = anonymous(&up);
    r.token_hosts.clear();
    let mirror = Mirror::builder()
        .registry(r.clone().raw("    auth:\n      tokenFromEnv: E2E_UPSTREAM_TOKEN\n"))
        .env("E2E_UPSTREAM_TOKEN", &token)
        .start();
    raw_pull(&mirror, REPO, TAG, &format!("?ns={NAME}"));
    assert_eq!(
        tokens.requests().len(),
        0,
        "no token exchange: {:?}\n{}",
        tokens.requests(),
        mirror.explain()
    );

    // Without it the same mirror setup cannot pull at all.
    let bare = Mirror::builder().registry(r).start();
    assert_ne!(manifest_status(&bare).0, 200, "the registry refuses anonymous pulls");
}

/// `OCIREGISTRY_*` variables set config keys over the file: the password the
/// file leaves out comes from `OCIREGISTRY_REGISTRIES__0__AUTH__PASSWORD`; a
/// misspelt variable stops start-up with its name in the error.
#[test]
fn environment_variables_set_config_keys() {
    let up = Upstream::basic();
    let work = tempdir("credentials");
    seed(&up, work.path(), &ImageSpec::single(3104, &[800, 10_000]), REPO, TAG);
    let (user, password) = up.credentials().expect("a basic upstream has credentials");
    let r = anonymous(&up);
    let mirror = Mirror::builder()
        .registry(r.clone().raw(&format!("    auth:\n      user: {user}\n")))
        .env("OCIREGISTRY_REGISTRIES__0__AUTH__PASSWORD", password)
        .start();
    raw_pull(&mirror, REPO, TAG, &format!("?ns={NAME}"));

    let failed =
        Mirror::builder().registry(r).env("OCIREGISTRY_CACHESIZE__MAX", "1GiB").start_expecting_failure();
    assert!(failed.exited && failed.code != Some(0), "{}", failed.output);
    assert!(
        failed.output.contains("OCIREGISTRY_CACHESIZE__MAX") && failed.output.contains("cacheSize"),
        "the error names the variable and the keys there are:\n{}",
        failed.output
    );
}

/// A registry named by its ECR host needs no `auth`: the password is asked of
/// ECR's `GetAuthorizationToken` (here a stand-in at `AWS_ENDPOINT_URL_ECR`),
/// signed with the credentials the AWS SDK's default chain finds in the
/// environment, once for a whole pull.
#[test]
fn ecr_token_from_the_aws_credential_chain() {
    const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    let up = Upstream::basic();
    let work = tempdir("credentials");
    seed(&up, work.path(), &ImageSpec::single(3105, &[600, 15_000, 9_000]), REPO, TAG);
    let (user, password) = up.credentials().expect("a basic upstream has credentials");
    let ecr = crate::support::ecr::FakeEcr::start(user, password, 12 * 3600);
    let mut r = RegistryConfig::new(ECR_HOST).endpoint(&up.url());
    r.auth = None;
    let mirror = Mirror::builder()
        .registry(r)
        .env("AWS_ENDPOINT_URL_ECR", &ecr.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDE2ETEST")
        .env("AWS_SECRET_ACCESS_KEY", "e2e-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .start();
    raw_pull(&mirror, REPO, TAG, &format!("?ns={ECR_HOST}"));
    let asked = ecr.requests();
    assert_eq!(asked.len(), 1, "one token for the whole pull\n{}\n{}", ecr.explain(), mirror.explain());
    assert!(
        asked[0].authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDE2ETEST/")
            && asked[0].authorization.contains("/us-east-1/ecr/aws4_request"),
        "signed with the environment's credentials for the host's region: {}",
        asked[0].authorization
    );
}
