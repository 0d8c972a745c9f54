//! Which content may be served for which repository (distribution's rule).
//!
//! Content is stored once by digest and shared, but it is served for a
//! (registry, repository) only when linked to it: by a manifest of that
//! repository that references it, or by a successful upstream check for that
//! repository. Without this, anything cached from a private registry could be
//! read by digest through any other name.
//!
//! In memory a sharded map from repository to its linked digests: a hit takes
//! one shard's read lock and allocates nothing. On disk one append-only file
//! per repository, `links/<registry>/<repo…>/_links`, holding the *root* links
//! (manifests pulled by digest, blobs checked upstream) one line each; what
//! tags and manifests imply is derived again at start-up. A line torn by a
//! crash fails to parse and is skipped.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use dashmap::DashMap;
use tracing::warn;

use super::Locator;
use super::index::Index;
use super::layout::{LINKS_FILE, Layout};
use crate::oci::{Digest, RegistryHost, RepoName};

/// A linked digest and the size its descriptor (or the upstream) stated.
pub type Size = Option<u64>;

#[derive(Default)]
pub struct Links {
    repos: DashMap<Locator, HashMap<Digest, Size>>,
}

impl Links {
    /// `Some(size)` when `d` is linked to `loc`.
    pub fn get(&self, loc: &Locator, d: &Digest) -> Option<Size> {
        self.repos.get(loc).and_then(|r| r.get(d).copied())
    }

    /// Links `d` to `loc` in memory; a known size is never replaced by `None`.
    /// Returns whether the link is new.
    pub fn insert(&self, loc: &Locator, d: &Digest, size: Size) -> bool {
        let mut repo = self.repos.entry(loc.clone()).or_default();
        match repo.get_mut(d) {
            Some(known) => {
                if known.is_none() {
                    *known = size;
                }
                false
            }
            None => {
                repo.insert(d.clone(), size);
                true
            }
        }
    }

    /// Links a manifest and, through the index, everything it references
    /// (child manifests of an index recursively, configs and layers).
    pub fn insert_manifest_tree(&self, index: &Index, loc: &Locator, d: &Digest, size: Size) {
        let mut todo = vec![(d.clone(), size)];
        let mut seen = std::collections::HashSet::new();
        while let Some((d, size)) = todo.pop() {
            self.insert(loc, &d, size);
            if !seen.insert(d.clone()) {
                continue;
            }
            if let Some(m) = index.manifest(&d) {
                todo.extend(m.references.iter().map(|r| (r.digest.clone(), r.size)));
            }
        }
    }

    /// Loads the root links on disk, then derives what the cached tags and
    /// manifests imply. Returns the links and how many lines were skipped.
    pub fn load(layout: &Layout, index: &Index) -> (Links, usize) {
        let links = Links::default();
        let mut skipped = 0;
        let root = layout.links();
        for entry in walkdir::WalkDir::new(&root).into_iter().filter_map(Result::ok) {
            if !entry.file_type().is_file() || entry.file_name() != LINKS_FILE {
                continue;
            }
            let Some(loc) = locator_of(&root, entry.path()) else {
                warn!(file = %entry.path().display(), "skipping a link file outside any repository");
                skipped += 1;
                continue;
            };
            let text = match std::fs::read_to_string(entry.path()) {
                Ok(t) => t,
                Err(e) => {
                    warn!(file = %entry.path().display(), error = %e, "skipping unreadable link file");
                    skipped += 1;
                    continue;
                }
            };
            for line in text.lines() {
                match parse_line(line) {
                    Some((d, size)) => links.insert_manifest_tree(index, &loc, &d, size),
                    None => skipped += 1,
                }
            }
        }
        for (registry, repo, digest) in index.tagged() {
            let loc = Locator { registry, repo };
            let size = index.manifest(&digest).map(|m| m.bytes.len() as u64);
            links.insert_manifest_tree(index, &loc, &digest, size);
        }
        (links, skipped)
    }
}

/// Appends root links to the repository's link file. One `write` per call,
/// so concurrent appends never interleave within a line.
pub fn persist(layout: &Layout, loc: &Locator, entries: &[(Digest, Size)]) -> std::io::Result<()> {
    let path = layout.link_file(&loc.registry, &loc.repo);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = String::new();
    for (d, size) in entries {
        let size = size.map_or("-".to_owned(), |s| s.to_string());
        text.push_str(&format!("{d} {size}\n"));
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(text.as_bytes())
}

fn parse_line(line: &str) -> Option<(Digest, Size)> {
    let (d, size) = line.split_once(' ')?;
    let size = match size {
        "-" => None,
        s => Some(s.parse().ok()?),
    };
    Some((Digest::parse(d).ok()?, size))
}

/// `links/<registry>/<repo…>/_links` → the repository.
fn locator_of(root: &Path, file: &Path) -> Option<Locator> {
    let rel = file.strip_prefix(root).ok()?.parent()?;
    let mut parts = rel.iter().map(|p| p.to_str());
    let registry = RegistryHost::parse(parts.next()??).ok()?;
    let repo: Vec<&str> = parts.collect::<Option<_>>()?;
    let repo = RepoName::parse(&repo.join("/")).ok()?;
    Some(Locator { registry, repo })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(r: &str) -> Locator {
        Locator { registry: RegistryHost::parse("r.test").unwrap(), repo: RepoName::parse(r).unwrap() }
    }

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn links_are_per_repository_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let links = Links::default();
        assert!(links.insert(&loc("a/b"), &digest('a'), Some(3)));
        assert!(!links.insert(&loc("a/b"), &digest('a'), None), "a known size is kept");
        assert_eq!(links.get(&loc("a/b"), &digest('a')), Some(Some(3)));
        assert_eq!(links.get(&loc("a/c"), &digest('a')), None, "another repository is not linked");
        persist(&layout, &loc("a/b"), &[(digest('a'), Some(3)), (digest('b'), None)]).unwrap();
        // A crash mid-append leaves a torn last line: skipped on load.
        let file = layout.link_file(&loc("a/b").registry, &loc("a/b").repo);
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"sha256:cc").unwrap();
        let (loaded, skipped) = Links::load(&layout, &Index::default());
        assert_eq!(loaded.get(&loc("a/b"), &digest('a')), Some(Some(3)));
        assert_eq!(loaded.get(&loc("a/b"), &digest('b')), Some(None));
        assert_eq!(loaded.get(&loc("a/c"), &digest('a')), None);
        assert_eq!(skipped, 1);
    }
}
