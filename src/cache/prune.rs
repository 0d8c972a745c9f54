//! Removing images: what goes (a plan, shown whole by `--dry-run`) and
//! removing it safely beside a running server.
//!
//! Image granularity, blobs reference-counted: a manifest or blob any
//! remaining image uses stays. Content nothing uses (orphans) goes too, once
//! older than a grace period, so a `load` still committing blobs before its
//! manifests is never collected half-way. Readers holding a file keep it
//! until they finish (an unlinked file stays readable); downloads in
//! progress hold their partial locked and are never swept.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use regex::Regex;

use super::Locator;
use super::catalog::{Catalog, Image};
use super::store::Store;
use crate::oci::Digest;

/// Orphans younger than this stay: a load may be between its blobs and its manifests.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// Which images to remove; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Any of these regexes matches the image's name (`registry/repo:tag` or `registry/repo@digest`).
    pub patterns: Vec<Regex>,
    /// Cached before this time.
    pub created_before: Option<SystemTime>,
    /// Last pulled (or, never pulled, cached) before this time.
    pub accessed_before: Option<SystemTime>,
}

impl Selection {
    /// Comma-separated regexes (the reference's `--pattern`).
    pub fn patterns(list: &str) -> Result<Vec<Regex>, regex::Error> {
        list.split(',').map(str::trim).filter(|p| !p.is_empty()).map(Regex::new).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.created_before.is_none() && self.accessed_before.is_none()
    }

    /// The images (indexes into the catalog) to remove: those matching,
    /// least recently used first, at most `count`. None when nothing is selected.
    pub fn pick(&self, catalog: &Catalog, count: Option<usize>) -> HashSet<usize> {
        if self.is_empty() {
            return HashSet::new();
        }
        let mut matching: Vec<(usize, &Image)> =
            catalog.images.iter().enumerate().filter(|(_, i)| self.matches(i)).collect();
        // Oldest first by what the selection is about: cache time for a
        // `created` rule alone, else last use.
        let by_created = self.created_before.is_some() && self.accessed_before.is_none();
        matching.sort_by_key(|(_, i)| if by_created { i.created } else { i.last_used() });
        matching.into_iter().take(count.unwrap_or(usize::MAX)).map(|(n, _)| n).collect()
    }

    pub fn matches(&self, image: &Image) -> bool {
        let name = image.name();
        (self.patterns.is_empty() || self.patterns.iter().any(|p| p.is_match(&name)))
            && self.created_before.is_none_or(|t| image.created.is_some_and(|c| c < t))
            && self.accessed_before.is_none_or(|t| image.last_used().is_some_and(|u| u < t))
    }
}

/// What a prune removes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub images: Vec<Image>,
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
    /// Of which orphans: used by no image at all.
    pub orphans: usize,
    pub bytes: u64,
}

impl Plan {
    /// The images at `doomed` (indexes into the catalog's images), with
    /// what only they use, and orphans older than `grace`.
    pub fn new(catalog: &Catalog, store: &dyn Store, doomed: &HashSet<usize>, grace: Duration) -> Plan {
        let (unused_manifests, unused_blobs) = catalog.unused_after(doomed);
        let images: Vec<Image> = doomed.iter().filter_map(|i| catalog.images.get(*i).cloned()).collect();
        let theirs: HashSet<&Digest> =
            images.iter().flat_map(|i| i.manifests.iter().chain(&i.blobs)).collect();
        let old = |at: Option<SystemTime>| at.and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= grace);
        let mut orphans = 0;
        let mut keep = |d: &Digest, stored_at: Option<SystemTime>| {
            if theirs.contains(d) {
                return true;
            }
            let go = old(stored_at);
            orphans += usize::from(go);
            go
        };
        let manifests: Vec<Digest> =
            unused_manifests.into_iter().filter(|d| keep(d, store.manifest_stored_at(d))).collect();
        let blobs: Vec<Digest> =
            unused_blobs.into_iter().filter(|d| keep(d, store.blob_stored_at(d))).collect();
        let bytes = catalog.bytes_of(&manifests, &blobs);
        let mut images = images;
        images.sort_by_key(Image::name);
        Plan { images, manifests, blobs, orphans, bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.manifests.is_empty() && self.blobs.is_empty()
    }
}

/// What applying a plan did.
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    pub images: usize,
    pub manifests: usize,
    pub blobs: usize,
    /// Blob and partial-download bytes freed (manifests are a rounding error).
    pub bytes: u64,
    pub partials: usize,
    /// Removals that failed, for the log; the rest went on.
    pub errors: Vec<String>,
}

/// Removes what `plan` says, tags first (so nothing new resolves to what is
/// going), then links and pull times, then manifests, then blobs no
/// manifest in the store references any more (re-read just before, so a
/// manifest cached meanwhile keeps its blobs).
pub fn apply(store: &dyn Store, plan: &Plan) -> Pruned {
    let mut done = Pruned::default();
    let mut errors = Vec::new();
    for image in &plan.images {
        if let Some(tag) = &image.tag
            && let Err(e) = store.remove_tag(&image.loc.registry, &image.loc.repo, tag)
        {
            done_error(&mut errors, format!("removing tag {}", image.name()), e);
        }
    }
    // Root links and pull times of the removed images, per repository.
    let mut gone: HashMap<&Locator, HashSet<String>> = HashMap::new();
    for image in &plan.images {
        let refs = gone.entry(&image.loc).or_default();
        refs.insert(image.reference());
        refs.extend(image.manifests.iter().map(Digest::to_string));
    }
    for (loc, refs) in &gone {
        let digests: Vec<Digest> = refs.iter().filter_map(|r| Digest::parse(r).ok()).collect();
        if let Err(e) = store.unlink(loc, &digests) {
            done_error(&mut errors, format!("rewriting the links of {loc}"), e);
        }
        let refs: Vec<String> = refs.iter().cloned().collect();
        if let Err(e) = store.forget_pulls(loc, &refs) {
            done_error(&mut errors, format!("forgetting the pull times of {loc}"), e);
        }
    }
    done.images = plan.images.len();
    for d in &plan.manifests {
        match store.remove_manifest(d) {
            Ok(()) => done.manifests += 1,
            Err(e) => done_error(&mut errors, format!("removing manifest {d}"), e),
        }
    }
    let still_used: HashSet<Digest> = store
        .manifests()
        .into_iter()
        .flatten()
        .filter_map(|m| crate::oci::ManifestView::parse(&m.bytes, Some(&m.media_type)).ok())
        .flat_map(|v| v.references.into_iter().map(|r| r.digest))
        .collect();
    // An import beside us commits blobs before the manifests that use them.
    let held = store.blobs_held();
    if held && !plan.blobs.is_empty() {
        errors.push("blobs kept: an archive import is running (prune again once it is done)".into());
    }
    for d in plan.blobs.iter().filter(|d| !held && !still_used.contains(*d)) {
        let len = store.blob_len(d).ok().flatten().unwrap_or(0);
        match store.remove_blob(d) {
            Ok(()) => {
                done.blobs += 1;
                done.bytes += len;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => done_error(&mut errors, format!("removing blob {d}"), e),
        }
    }
    let (partials, partial_bytes) = store.sweep_partials();
    done.partials = partials;
    done.bytes += partial_bytes;
    if let Err(e) = store.bump_generation() {
        done_error(&mut errors, "telling a running server about the change".into(), e);
    }
    done.errors = errors;
    done
}

fn done_error(errors: &mut Vec<String>, what: String, e: std::io::Error) {
    errors.push(format!("{what}: {e}"));
}
