//! `skopeo` (Debian, 1.9), the client that seeds upstreams and pulls through the mirror.
//!
//! A failed command panics with its full command line, its stderr and the
//! explanations (log tails, proxy traffic) of the fixtures given as context.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::image::{ImageInfo, find_blob, image_info_from};
use super::mirror::Mirror;
use super::{Explain, digest_of_file, hex_of, require_tool, run, run_ok};

/// A skopeo invocation builder carrying failure context.
pub struct Skopeo<'a> {
    program: PathBuf,
    context: Vec<&'a dyn Explain>,
}

impl Default for Skopeo<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Skopeo<'a> {
    pub fn new() -> Skopeo<'a> {
        Skopeo { program: require_tool("skopeo", "skopeo"), context: Vec::new() }
    }

    /// Adds a fixture whose story is told if a command fails.
    pub fn context(mut self, fixture: &'a dyn Explain) -> Skopeo<'a> {
        self.context.push(fixture);
        self
    }

    /// `skopeo --insecure-policy ARGS…` (the policy is about signatures, not TLS).
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--insecure-policy").args(args);
        cmd
    }

    /// Runs and panics with full details unless it succeeds.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_ok(&mut self.command(args), &self.context)
    }

    /// Runs and returns the output, successful or not.
    pub fn try_run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run(&mut self.command(args))
    }

    /// `skopeo copy --all --preserve-digests --src-tls-verify=false
    /// docker://127.0.0.1:PORT/<path> dir:<out>` through the mirror, then reads what
    /// landed in `out` (checking each blob file against its digest).
    /// `path` is e.g. `up.test/team/app:v1` (in-path) or `team/app:v1` (defaultNs).
    pub fn pull_via_mirror(&self, mirror: &Mirror, path: &str, out: &Path) -> ImageInfo {
        let src = format!("docker://{}/{path}", mirror.host_port());
        self.copy_to_dir(&src, &["--src-tls-verify=false".to_string()], out)
    }

    /// Like [`Skopeo::pull_via_mirror`], but only the `arch` (linux) image of an index,
    /// the way a client on that machine pulls: `skopeo --override-arch ARCH copy` without
    /// `--all`. What lands in `out` is that platform's image manifest and its blobs.
    pub fn pull_platform_via_mirror(&self, mirror: &Mirror, path: &str, arch: &str, out: &Path) -> ImageInfo {
        let src = format!("docker://{}/{path}", mirror.host_port());
        let args: Vec<String> = vec![
            "--override-os".into(),
            "linux".into(),
            "--override-arch".into(),
            arch.into(),
            "copy".into(),
            "--preserve-digests".into(),
            "--src-tls-verify=false".into(),
            src,
            format!("dir:{}", out.display()),
        ];
        self.run(&args);
        read_dir_image(out)
    }

    /// `skopeo copy --all --preserve-digests FLAGS SRC dir:OUT`, then [`read_dir_image`].
    pub fn copy_to_dir(&self, src: &str, flags: &[String], out: &Path) -> ImageInfo {
        let mut args: Vec<String> = vec!["copy".into(), "--all".into(), "--preserve-digests".into()];
        args.extend(flags.iter().cloned());
        args.push(src.to_string());
        args.push(format!("dir:{}", out.display()));
        self.run(&args);
        read_dir_image(out)
    }
}

/// Reads an image from a skopeo `dir:` directory: `manifest.json` is the top manifest,
/// `<hex>.manifest.json` each platform manifest, `<hex>` each blob. Panics if a blob is
/// missing or does not match its digest.
pub fn read_dir_image(dir: &Path) -> ImageInfo {
    let top = std::fs::read(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("reading {}/manifest.json: {e}", dir.display()));
    let info = image_info_from(top, |digest| {
        let p = dir.join(format!("{}.manifest.json", hex_of(digest)));
        std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    });
    for blob in info.blobs() {
        let path = find_blob(dir, &blob.digest)
            .unwrap_or_else(|| panic!("blob {} missing from {}", blob.digest, dir.display()));
        assert_eq!(
            digest_of_file(&path),
            blob.digest,
            "blob file {} does not match its digest",
            path.display()
        );
    }
    info
}
