//! The cache directory's layout: the one place that turns typed values into paths.
//!
//! ```text
//! <imagePath>/
//!   blobs/sha256/ab/ab12…                    verified blob bytes, named by digest
//!   manifests/sha256/cd/cd34…                "<media type>\n" + the exact upstream bytes
//!   tags/<registry>/<repo…>/_tags/<tag>      the digest the tag pointed to, as text
//!   links/<registry>/<repo…>/_links          "<digest> <size|->" lines: content served for the repository
//!   pulled/<registry>/<repo…>/_pulled        "<tag|digest> <unix seconds>" lines: last pulls (latest wins)
//!   generation                               a random number, changed by `load`/`prune` beside a server
//!   pinned                                   globs pinned through the admin API, one per line
//!   quarantine/<alg>-<hex>                   blobs found corrupt, kept for inspection
//!   tmp/                                     downloads in progress; renamed into place when verified
//!   tmp/sha256-ab12….partial                 an interrupted download, resumed by the next fill
//! ```
//!
//! Every function takes parsed vocabulary ([`Digest`], [`RepoName`], [`Tag`],
//! [`RegistryHost`]), whose grammars admit no `/`-escapes, `.` or `..`
//! components, so no request can name a path outside the root. `_tags` can
//! never be a repository component (components start with a letter or digit).

use std::path::{Path, PathBuf};

use crate::oci::{Digest, RegistryHost, RepoName, Tag};

pub const TAGS_DIR: &str = "_tags";
pub const LINKS_FILE: &str = "_links";
pub const PULLED_FILE: &str = "_pulled";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn tags(&self) -> PathBuf {
        self.root.join("tags")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn pulled(&self) -> PathBuf {
        self.root.join("pulled")
    }

    pub fn pins(&self) -> PathBuf {
        self.root.join("pinned")
    }

    pub fn generation(&self) -> PathBuf {
        self.root.join("generation")
    }

    /// The repository's pull-time file.
    pub fn pulled_file(&self, registry: &RegistryHost, repo: &RepoName) -> PathBuf {
        self.pulled().join(registry.as_str()).join(repo.as_str()).join(PULLED_FILE)
    }

    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// The repository's link file.
    pub fn link_file(&self, registry: &RegistryHost, repo: &RepoName) -> PathBuf {
        self.links().join(registry.as_str()).join(repo.as_str()).join(LINKS_FILE)
    }

    /// Where a corrupt blob is moved.
    pub fn quarantined(&self, d: &Digest) -> PathBuf {
        self.quarantine().join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        sharded(self.blobs(), d)
    }

    pub fn manifest(&self, d: &Digest) -> PathBuf {
        sharded(self.manifests(), d)
    }

    pub fn tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> PathBuf {
        self.tags_dir(registry, repo).join(tag.as_str())
    }

    /// The directory of a repository's tag files.
    pub fn tags_dir(&self, registry: &RegistryHost, repo: &RepoName) -> PathBuf {
        self.tags().join(registry.as_str()).join(repo.as_str()).join(TAGS_DIR)
    }

    /// Where a download of `d` is written, kept across restarts so an
    /// interrupted download resumes instead of starting over.
    pub fn partial(&self, d: &Digest) -> PathBuf {
        self.tmp().join(format!("{}-{}.partial", d.algorithm().as_str(), d.hex()))
    }

    /// A fresh temporary file name; never reused, so concurrent fills (even
    /// from another process sharing the directory) cannot collide.
    pub fn temp_file(&self, purpose: &str) -> PathBuf {
        let n: u64 = rand::random();
        self.tmp().join(format!("{purpose}-{}-{n:016x}.part", std::process::id()))
    }
}

fn sharded(base: PathBuf, d: &Digest) -> PathBuf {
    base.join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_root() {
        let l = Layout::new("/c");
        let d =
            Digest::parse("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(l.blob(&d), PathBuf::from(format!("/c/blobs/sha256/e3/{}", d.hex())));
        let t = l.tag(
            &RegistryHost::parse("127.0.0.1:5000").unwrap(),
            &RepoName::parse("a/b").unwrap(),
            &Tag::parse("V1").unwrap(),
        );
        assert_eq!(t, PathBuf::from("/c/tags/127.0.0.1:5000/a/b/_tags/V1"));
        assert!(l.temp_file("blob").starts_with("/c/tmp"));
    }
}
