//! The bucket's layout: `layout.rs`'s directory tree as object keys under
//! `prefix`, and back. The one place that turns typed values into keys.
//!
//! ```text
//! <prefix>/
//!   blobs/<alg>/<hex>                                   verified blob bytes
//!   manifests/<alg>/<hex>                               "<media type>\n" + the exact upstream bytes
//!   tags/<registry>/<repo…>/_tags/<tag>                 "<digest>\n<unix seconds checked>"
//!   links/<registry>/<repo…>/_links/<alg>-<hex>/<size|->          empty: one object per link
//!   pulled/<registry>/<repo…>/_pulled/<reference>/<unix seconds>  empty: the latest wins
//!   generation, pinned                                  as in the directory
//!   quarantine/<alg>-<hex>[.manifest]                   found corrupt, kept for inspection
//!   leases/<alg>-<hex>                                  who is downloading the blob now (JSON)
//! ```
//!
//! Objects cannot be appended to, so a link or a pull time is an object of
//! its own, named by what it says: adding one never rewrites another, and a
//! listing (a thousand keys a request) reads them all without a GET each.
//! Keys are built from parsed vocabulary, so no request can name a key
//! outside the prefix; keys read back from a listing are parsed again, and
//! anything foreign is skipped.

use object_store::path::{Path, PathPart};

use crate::cache::Locator;
use crate::cache::store::layout::{LINKS_FILE, PULLED_FILE, TAGS_DIR};
use crate::oci::{Digest, RegistryHost, RepoName, Tag};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Vec<String>,
}

impl Keys {
    /// `prefix` is `/`-separated; empty parts are dropped.
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.split('/').filter(|p| !p.is_empty()).map(str::to_owned).collect() }
    }

    fn key<'a>(&'a self, parts: impl IntoIterator<Item = &'a str>) -> Path {
        Path::from_iter(self.prefix.iter().map(String::as_str).chain(parts))
    }

    fn repo_key(&self, top: &str, loc: &Locator, marker: &str) -> Path {
        self.key([top, loc.registry.as_str()].into_iter().chain(loc.repo.as_str().split('/')).chain([marker]))
    }

    /// Everything of one kind: `blobs`, `manifests`, `tags`, `links`, `pulled`.
    pub fn top(&self, top: &str) -> Path {
        self.key([top])
    }

    pub fn blob(&self, d: &Digest) -> Path {
        self.key(["blobs", d.algorithm().as_str(), &d.hex()])
    }

    pub fn manifest(&self, d: &Digest) -> Path {
        self.key(["manifests", d.algorithm().as_str(), &d.hex()])
    }

    pub fn quarantined(&self, d: &Digest, suffix: &str) -> Path {
        self.key(["quarantine", &format!("{}-{}{suffix}", d.algorithm().as_str(), d.hex())])
    }

    pub fn tags_of(&self, loc: &Locator) -> Path {
        self.repo_key("tags", loc, TAGS_DIR)
    }

    pub fn tag(&self, registry: &RegistryHost, repo: &RepoName, tag: &Tag) -> Path {
        let loc = Locator { registry: registry.clone(), repo: repo.clone() };
        self.tags_of(&loc).join(tag.as_str())
    }

    pub fn links_of(&self, loc: &Locator) -> Path {
        self.repo_key("links", loc, LINKS_FILE)
    }

    /// Every link of `d` in the repository sits under this (one per size seen).
    pub fn links_of_digest(&self, loc: &Locator, d: &Digest) -> Path {
        self.links_of(loc).join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    pub fn link(&self, loc: &Locator, d: &Digest, size: Option<u64>) -> Path {
        self.links_of_digest(loc, d).join(size.map_or("-".to_owned(), |s| s.to_string()))
    }

    pub fn pulls_of(&self, loc: &Locator, reference: &str) -> Path {
        self.repo_key("pulled", loc, PULLED_FILE).join(reference)
    }

    pub fn pull(&self, loc: &Locator, reference: &str, secs: u64) -> Path {
        self.pulls_of(loc, reference).join(secs.to_string())
    }

    /// Who is downloading `d` (see `lease.rs`).
    pub fn lease(&self, d: &Digest) -> Path {
        self.key(["leases", &format!("{}-{}", d.algorithm().as_str(), d.hex())])
    }

    /// Who is pruning the bucket now.
    pub fn pruning_lease(&self) -> Path {
        self.key(["leases", "prune"])
    }

    pub fn generation(&self) -> Path {
        self.key(["generation"])
    }

    pub fn pins(&self) -> Path {
        self.key(["pinned"])
    }

    pub fn probe(&self) -> Path {
        self.key(["tmp", &format!("probe-{:016x}", rand::random::<u64>())])
    }

    /// The parts of a listed key below `top`, decoded; `None` if it is not under it.
    fn below(&self, key: &Path, top: &str) -> Option<Vec<String>> {
        let mut parts = key.parts();
        for p in self.prefix.iter().map(String::as_str).chain([top]) {
            if parts.next()?.as_ref() != PathPart::from(p).as_ref() {
                return None;
            }
        }
        parts
            .map(|p| {
                percent_encoding::percent_decode_str(p.as_ref()).decode_utf8().ok().map(|s| s.into_owned())
            })
            .collect()
    }

    /// `blobs/<alg>/<hex>` or `manifests/<alg>/<hex>` → the digest.
    pub fn digest_of(&self, key: &Path, top: &str) -> Option<Digest> {
        let parts = self.below(key, top)?;
        let [alg, hex] = parts.as_slice() else { return None };
        Digest::parse(&format!("{alg}:{hex}")).ok()
    }

    /// `<top>/<registry>/<repo…>/<marker>/<rest…>` → the repository and `rest`.
    pub fn in_repo(&self, key: &Path, top: &str, marker: &str) -> Option<(Locator, Vec<String>)> {
        let parts = self.below(key, top)?;
        let at = parts.iter().position(|p| p == marker)?;
        let (registry, repo) = parts[..at].split_first()?;
        let registry = RegistryHost::parse(registry).ok()?;
        let repo = RepoName::parse(&repo.join("/")).ok()?;
        Some((Locator { registry, repo }, parts[at + 1..].to_vec()))
    }

    /// A tag's key → its repository and tag.
    pub fn tag_of(&self, key: &Path) -> Option<(Locator, Tag)> {
        let (loc, rest) = self.in_repo(key, "tags", TAGS_DIR)?;
        let [tag] = rest.as_slice() else { return None };
        Some((loc, Tag::parse(tag).ok()?))
    }

    /// A link's key → its repository, digest and size.
    pub fn link_of(&self, key: &Path) -> Option<(Locator, Digest, Option<u64>)> {
        let (loc, rest) = self.in_repo(key, "links", LINKS_FILE)?;
        let [digest, size] = rest.as_slice() else { return None };
        let (alg, hex) = digest.split_once('-')?;
        let d = Digest::parse(&format!("{alg}:{hex}")).ok()?;
        let size = match size.as_str() {
            "-" => None,
            s => Some(s.parse().ok()?),
        };
        Some((loc, d, size))
    }

    /// A pull time's key → its repository, reference and time.
    pub fn pull_of(&self, key: &Path) -> Option<(Locator, String, u64)> {
        let (loc, rest) = self.in_repo(key, "pulled", PULLED_FILE)?;
        let [reference, secs] = rest.as_slice() else { return None };
        crate::oci::Reference::parse(reference).ok()?;
        Some((loc, reference.clone(), secs.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_what_they_name() {
        let k = Keys::new("/cache/a/");
        let loc = Locator {
            registry: RegistryHost::parse("[::1]:5000").unwrap(),
            repo: RepoName::parse("team/app").unwrap(),
        };
        let d =
            Digest::parse("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(k.blob(&d).as_ref(), format!("cache/a/blobs/sha256/{}", d.hex()));
        assert_eq!(k.digest_of(&k.blob(&d), "blobs"), Some(d.clone()));
        assert_eq!(k.digest_of(&k.blob(&d), "manifests"), None);
        let tag = Tag::parse("V1.0").unwrap();
        assert_eq!(k.tag_of(&k.tag(&loc.registry, &loc.repo, &tag)), Some((loc.clone(), tag)));
        assert_eq!(k.link_of(&k.link(&loc, &d, Some(7))), Some((loc.clone(), d.clone(), Some(7))));
        assert_eq!(k.link_of(&k.link(&loc, &d, None)), Some((loc.clone(), d.clone(), None)));
        let r = d.to_string();
        assert_eq!(k.pull_of(&k.pull(&loc, &r, 42)), Some((loc.clone(), r, 42)));
        // Another prefix's keys are not ours.
        assert_eq!(Keys::new("cache/b").digest_of(&k.blob(&d), "blobs"), None);
    }
}
