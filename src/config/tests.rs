//! Configuration errors name their key; defaults and precedence.

use super::*;

fn resolve(yaml: &str) -> Result<Config> {
    Config::resolve(File::parse(yaml)?, Overrides::default())
}

fn err(yaml: &str) -> String {
    format!("{:#}", resolve(yaml).unwrap_err())
}

#[test]
fn defaults() {
    let c = resolve("").unwrap();
    assert_eq!(c.image_path, PathBuf::from(DEFAULT_IMAGE_PATH));
    assert_eq!((c.host.as_str(), c.port), (DEFAULT_HOST, DEFAULT_PORT));
    assert!(c.allow_unconfigured);
    assert!(c.registries.is_empty());
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err("port: 1\nbogus: 2\n");
    assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
    let e = err("registries:\n  - name: a.b\n    schem: http\n");
    assert!(e.contains("schem") && e.contains("line 3"), "{e}");
}

#[test]
fn reference_keys_warn() {
    let c = resolve("resolveRef: true\nlistConfig: {}\nos: linux\npruneConfig: {enabled: false}\n").unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("resolveRef"));
    assert_eq!(c.load.os.as_deref(), Some("linux"), "os takes effect");
}

#[test]
fn capacity_and_pruning_keys() {
    let c = resolve(
        "cacheSize: {max: 20GiB, target: 18GiB}\nminFreeDisk: 2GiB\npinned: ['docker.io/library/*:*']\n\
         pruneConfig: {enabled: true, type: accessed, duration: 30d, frequency: 1d, count: -1}\n\
         upstreamBandwidth: 2MiB/s\nloadWindow: '22:00-06:00'\n",
    )
    .unwrap();
    assert_eq!((c.capacity.max, c.capacity.target), (Some(20 << 30), Some(18 << 30)));
    assert_eq!(c.capacity.min_free_disk, Some(2 << 30));
    assert_eq!(c.upstream_bandwidth, Some(2 << 20));
    let p = c.prune.expect("pruneConfig enabled");
    assert_eq!((p.every, p.count), (std::time::Duration::from_secs(86_400), None));
    for (yaml, key) in [
        ("cacheSize: {max: 1GiB, target: 2GiB}\n", "cacheSize.target"),
        ("cacheSize: {max: lots}\n", "cacheSize.max"),
        ("pruneConfig: {enabled: true, type: sometimes}\n", "pruneConfig.type"),
        ("pruneConfig: {enabled: true, type: created}\n", "pruneConfig.duration"),
        ("pruneConfig: {enabled: true, type: pattern, expr: '('}\n", "pruneConfig.expr"),
        ("upstreamBandwidth: fast\n", "upstreamBandwidth"),
        ("loadWindow: soon\n", "loadWindow"),
        ("pinned: ['a[']\n", "pinned"),
    ] {
        assert!(err(yaml).contains(key), "{yaml}: {}", err(yaml));
    }
}

#[test]
fn bad_values_name_the_key() {
    assert!(err("registries:\n  - name: a.b\n    scheme: ftp\n").contains("registries[0]: scheme"));
    assert!(err("defaultNs: 'a b'\n").contains("defaultNs"));
    assert!(err("timeouts: {connect: soon}\n").contains("timeouts.connect"));
    assert!(err("logLevel: loud\n").contains("logLevel"));
    assert!(err("tagPolicy:\n  - {match: '*', ttl: soon}\n").contains("tagPolicy[0].ttl"));
    assert!(err("tagPolicy:\n  - {match: '*', policy: sometimes}\n").contains("tagPolicy[0].policy"));
    assert!(err("tagPolicy:\n  - {match: 'a[', policy: never}\n").contains("tagPolicy[0].match"));
    assert!(err("revalidate: later\n").contains("revalidate"));
    assert!(err("resilience: {maxConcurrentRequests: 0}\n").contains("resilience.maxConcurrentRequests"));
    assert!(
        err("registries:\n  - {name: a.b, endpoint: 'http://x', endpoints: ['http://y']}\n")
            .contains("endpoints")
    );
    assert!(err("registries:\n  - name: a.b\n    tls: {ca: /nonexistent.pem}\n").contains("tls.ca"));
    assert!(err("registries:\n  - name: a.b\n  - name: A.B\n").contains("listed twice"));
    let e = err("registries:\n  - {name: a.b, endpoint: 'https://user:s3cret@a.b'}\n");
    assert!(e.contains("registries[0]: endpoint") && e.contains("auth") && !e.contains("s3cret"), "{e}");
    assert!(
        err("registries:\n  - {name: a.b, auth: {tokenHosts: ['a b']}}\n").contains("auth.tokenHosts[0]")
    );
    assert!(
        err("registries:\n  - name: a.b\n    auth: {user: u, passwordFromEnv: OCIREG_NOPE_UNSET}\n")
            .contains("OCIREG_NOPE_UNSET")
    );
}

#[test]
fn connection_limits_and_verification() {
    let c = resolve("connections: {max: 10, firstByteTimeout: 1s}\nverify: {interval: 1h, rate: 2MiB}\n")
        .unwrap();
    assert_eq!(c.connections.max, Some(10));
    assert_eq!(c.connections.first_byte_timeout, Duration::from_secs(1));
    assert_eq!(c.connections.idle_timeout, Duration::from_secs(120));
    let v = c.verify.unwrap();
    assert_eq!((v.interval, v.rate), (Duration::from_secs(3600), Some(2 << 20)));
    assert!(resolve("verify: {interval: 'off'}\n").unwrap().verify.is_none());
    assert!(err("connections: {max: 0}\n").contains("connections.max"));
    assert!(err("connections: {idleTimeout: soon}\n").contains("connections.idleTimeout"));
    assert!(err("verify: {rate: fast}\n").contains("verify.rate"));
}

#[test]
fn docker_hub_endpoint_and_flags_win() {
    let flags = Overrides { port: Some(9), ..Default::default() };
    let c =
        Config::resolve(File::parse("port: 1\nregistries:\n  - name: docker.io\n").unwrap(), flags).unwrap();
    assert_eq!(c.port, 9);
    assert_eq!(c.registries[0].endpoints[0].as_str(), "https://registry-1.docker.io/");
    let c = resolve("pullTimeout: 1500\nregistries:\n  - {name: '127.0.0.1:5000', scheme: http}\n").unwrap();
    assert_eq!(c.registries[0].endpoints[0].as_str(), "http://127.0.0.1:5000/");
    assert_eq!(c.timeouts.response, Duration::from_millis(1500));
}

#[test]
fn auth_forms_ours_and_the_references() {
    use crate::upstream::{Credentials, Secret};
    let creds = |auth: &str| {
        let c = resolve(&format!(
            "registries:\n  - name: 123456789012.dkr.ecr.eu-west-1.amazonaws.com\n    auth: {auth}\n"
        ));
        c.map(|c| c.registries[0].credentials.clone())
    };
    assert!(
        matches!(creds("{token: abc}").unwrap(), Some(Credentials::Given(Secret::Token(t))) if t == "abc")
    );
    // The reference's static token is base64 of user:password, sent as Basic.
    let login = creds("{token: {static: dTpwOnc=}}").unwrap();
    assert!(
        matches!(login, Some(Credentials::Given(Secret::Login { user, password })) if user == "u" && password == "p:w")
    );
    assert!(matches!(
        creds("{token: {provider: ecr, providerOpts: 'profile=ci,region=us-east-2', expiry: 6h}}").unwrap(),
        Some(Credentials::Ecr(_))
    ));
    assert!(matches!(creds("{}").unwrap(), Some(Credentials::Ecr(_))), "an ECR host needs no auth");
    let e = format!("{:#}", creds("{token: {provider: gcr}}").unwrap_err());
    assert!(e.contains("auth.token.provider") && e.contains("gcr"), "{e}");
    let e = format!("{:#}", creds("{token: {provider: ecr, providerOpts: 'zone=x'}}").unwrap_err());
    assert!(e.contains("providerOpts") && e.contains("zone=x"), "{e}");
    let e = format!("{:#}", creds("{user: u, password: p, token: t}").unwrap_err());
    assert!(e.contains("give one of"), "{e}");
    let e = format!("{:#}", creds("{token: {static: '%%%'}}").unwrap_err());
    assert!(e.contains("auth.token.static"), "{e}");
}

#[test]
fn reference_spellings_and_values() {
    let c = resolve(
        "pruneConfig: {enabled: true, type: Accessed, duration: 30d, count: 0, dryrun: true}\n\
         registries:\n  - name: a.example\n    scheme: HTTP\n    opts: {whatever: 1}\n\
         serverTlsConfig: {clientAuth: none}\n",
    )
    .unwrap();
    let p = c.prune.as_ref().expect("pruning on");
    assert_eq!((p.count, p.dry_run), (None, true), "count 0 is no limit; dryrun is dryRun");
    assert_eq!(c.registries[0].endpoints[0].scheme(), "http");
    assert!(c.server_tls.is_none(), "only clientAuth: none is plain HTTP");
    assert!(c.warnings.iter().any(|w| w.contains("registries[].opts")), "{:?}", c.warnings);
}

#[test]
fn storage_s3_errors_name_their_key() {
    assert!(matches!(resolve("").unwrap().storage, crate::cache::store::Backend::Fs));
    let e = err("storage:\n  s3: {prefix: a}\n");
    assert!(e.contains("storage.s3") && e.contains("bucket"), "{e}");
    let e = err("storage:\n  s3: {bucket: \"a/b\"}\n");
    assert!(e.contains("storage.s3") && e.contains("not a bucket name"), "{e}");
    let e = err("storage:\n  s3: {bucket: b, prefix: \"x/../y\"}\n");
    assert!(e.contains("prefix"), "{e}");
    let e = err("storage:\n  s3: {bucket: b, endpoint: \"ftp://h\"}\n");
    assert!(e.contains("endpoint"), "{e}");
    let e = err("storage:\n  s3: {bucket: b, accessKeyIdFromEnv: OCIREGISTRY_TEST_UNSET_VAR}\n");
    assert!(e.contains("accessKeyIdFromEnv") && e.contains("OCIREGISTRY_TEST_UNSET_VAR"), "{e}");
    let e = err("storage:\n  s3: {bucket: b, pathstyle: true}\n");
    assert!(e.contains("pathstyle"), "{e}");
    let c = resolve(
        "storage:\n  s3: {bucket: b, prefix: p, endpoint: \"http://127.0.0.1:9000\", pathStyle: true}\n",
    )
    .unwrap();
    let crate::cache::store::Backend::S3(s) = c.storage else { panic!("not S3") };
    assert_eq!((s.bucket.as_str(), s.prefix.as_str(), s.path_style), ("b", "p", true));
    assert!(s.credentials.is_none(), "no key variables: the AWS chain decides");
}

#[test]
fn storage_s3_peers_need_an_address_and_a_token() {
    let base = "storage:\n  s3:\n    bucket: b\n    peers:\n";
    let e = err(&format!("{base}      port: 5003\n      tokenFromEnv: HOME\n"));
    assert!(e.contains("peers") && e.contains("advertise"), "{e}");
    let e = err(&format!(
        "{base}      port: 5003\n      advertise: \"https://10.0.0.5:5003\"\n      tokenFromEnv: HOME\n"
    ));
    assert!(e.contains("advertise") && e.contains("http://"), "{e}");
    let e = err(&format!("{base}      port: 5003\n      advertise: \"http://10.0.0.5:5003\"\n"));
    assert!(e.contains("tokenFromEnv"), "{e}");
    let e = err(&format!(
        "{base}      port: 5003\n      advertise: \"http://10.0.0.5:5003\"\n      tokenFromEnv: OCIREGISTRY_TEST_UNSET_VAR\n"
    ));
    assert!(e.contains("OCIREGISTRY_TEST_UNSET_VAR"), "{e}");
}
