//! Stamps the binary with its commit and build date for `ociregistry version`
//! and the start-up banner. Honours SOURCE_DATE_EPOCH for reproducible builds.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() {
    // An image build has no .git: it passes OCIREGISTRY_COMMIT instead.
    let commit = std::env::var("OCIREGISTRY_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|c| !c.is_empty())
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or_else(SystemTime::now, |secs| UNIX_EPOCH + Duration::from_secs(secs));
    let date = humantime::format_rfc3339_seconds(built).to_string();
    println!("cargo:rustc-env=OCIREGISTRY_COMMIT={commit}");
    println!("cargo:rustc-env=OCIREGISTRY_BUILD_DATE={}", &date[..10]);
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=OCIREGISTRY_COMMIT");
}
