//! What the cache holds, as an operator sees it: images, not files.
//!
//! An image is a *root* (a tag, or a manifest pulled by digest that no other
//! root of its repository contains) and everything under it: child manifests
//! of an index, configs and layers. Built from the store's listings, so the
//! commands and a running server see the same thing; it is a snapshot, read
//! once per command or per pruning pass, never on a request's path.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use tracing::warn;

use super::Locator;
use super::store::Store;
use crate::oci::{Digest, ManifestKind, ManifestView, Platform, Tag};

/// A config blob is read to learn a single-platform image's platform; past
/// this size it is not a config worth reading.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A manifest as the catalog needs it.
struct Node {
    media_type: String,
    kind: ManifestKind,
    len: u64,
    /// Child manifests (with the platform the index states) or config + layers.
    references: Vec<(Digest, Option<Platform>)>,
}

/// An image in the cache.
#[derive(Debug, Clone)]
pub struct Image {
    pub loc: Locator,
    /// `None` for an image pulled by digest only.
    pub tag: Option<Tag>,
    pub digest: Digest,
    pub media_type: String,
    pub kind: ManifestKind,
    /// What it is for: an index's cached children, or an image's config.
    pub platforms: Vec<Platform>,
    /// Every cached manifest of the image, the root first.
    pub manifests: Vec<Digest>,
    /// Configs and layers of the cached image manifests.
    pub blobs: Vec<Digest>,
    /// Manifest and blob bytes on disk (blobs shared with other images counted here too).
    pub size: u64,
    /// When its root manifest entered the cache.
    pub created: Option<SystemTime>,
    /// When a client last pulled it (any of its manifests, through this repository).
    pub pulled: Option<SystemTime>,
    /// What a client pulling it could not get offline.
    pub missing: Vec<Missing>,
}

impl Image {
    /// `registry/repo:tag` or `registry/repo@digest`: how it is named in lists and patterns.
    pub fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.loc),
            None => format!("{}@{}", self.loc, self.digest),
        }
    }

    /// The reference its pull times and links are recorded under.
    pub fn reference(&self) -> String {
        self.tag.as_ref().map_or_else(|| self.digest.to_string(), Tag::to_string)
    }

    /// The time eviction and `--accessed-before` go by: the last pull, else when it was cached.
    pub fn last_used(&self) -> Option<SystemTime> {
        self.pulled.or(self.created)
    }
}

/// An image as `list --json` and the admin API show it: one shape for both,
/// so a command reads the server's answer as it reads the directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub name: String,
    /// `registry/repository`.
    pub image: String,
    pub tag: Option<String>,
    pub digest: String,
    pub media_type: String,
    pub index: bool,
    pub platforms: Vec<String>,
    pub size: u64,
    /// RFC 3339, UTC.
    pub created: Option<String>,
    pub pulled: Option<String>,
    pub manifests: Vec<String>,
    pub blobs: usize,
    pub complete: bool,
    pub missing: Vec<String>,
}

impl Image {
    pub fn summary(&self) -> Summary {
        let date = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        Summary {
            name: self.name(),
            image: self.loc.to_string(),
            tag: self.tag.as_ref().map(Tag::to_string),
            digest: self.digest.to_string(),
            media_type: self.media_type.clone(),
            index: self.kind == ManifestKind::Index,
            platforms: self.platforms.iter().map(Platform::to_string).collect(),
            size: self.size,
            created: date(self.created),
            pulled: date(self.pulled),
            manifests: self.manifests.iter().map(Digest::to_string).collect(),
            blobs: self.blobs.len(),
            complete: self.missing.is_empty(),
            missing: self.missing.iter().map(Missing::to_string).collect(),
        }
    }
}

/// Content an image needs that is not in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// A child manifest of an index (with the platform it is for).
    Manifest { digest: Digest, platform: Option<Platform> },
    /// A config or layer of an image manifest.
    Blob { digest: Digest, manifest: Digest },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Manifest { digest, platform: Some(p) } => write!(f, "manifest {digest} ({p})"),
            Missing::Manifest { digest, platform: None } => write!(f, "manifest {digest}"),
            Missing::Blob { digest, manifest } => write!(f, "blob {digest} (of manifest {manifest})"),
        }
    }
}

/// Which platforms of an index matter: all of them, or those listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    All,
    Only(Vec<Platform>),
}

impl Platforms {
    /// `all`, or a comma-separated list such as `linux/amd64,linux/arm64`.
    pub fn parse(s: &str) -> Result<Platforms, String> {
        if s.trim() == "all" {
            return Ok(Platforms::All);
        }
        let list = s.split(',').map(Platform::parse).collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("no platform given".into());
        }
        Ok(Platforms::Only(list))
    }

    /// Whether a child for `p` (unstated: always) is wanted.
    pub fn wants(&self, p: Option<&Platform>) -> bool {
        match (self, p) {
            (Platforms::All, _) | (_, None) => true,
            (Platforms::Only(list), Some(p)) => list.iter().any(|w| p.matches(w)),
        }
    }
}

impl std::fmt::Display for Platforms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Platforms::All => f.write_str("all"),
            Platforms::Only(list) => {
                let names: Vec<String> = list.iter().map(Platform::to_string).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// A snapshot of the cache's images.
pub struct Catalog {
    pub images: Vec<Image>,
    nodes: HashMap<Digest, Node>,
    blobs: HashMap<Digest, u64>,
}

impl Catalog {
    pub fn load(store: &dyn Store) -> Catalog {
        let mut nodes = HashMap::new();
        for m in store.manifests().into_iter().flatten() {
            let Ok(view) = ManifestView::parse(&m.bytes, Some(&m.media_type)) else { continue };
            let references = view.references.into_iter().map(|r| (r.digest, r.platform)).collect();
            let node =
                Node { media_type: m.media_type, kind: view.kind, len: m.bytes.len() as u64, references };
            nodes.insert(m.digest, node);
        }
        let blobs: HashMap<Digest, u64> = store.blobs().into_iter().collect();
        let mut pulls: HashMap<(Locator, String), SystemTime> = HashMap::new();
        for (loc, reference, at) in store.pulls().into_iter().flatten() {
            let slot = pulls.entry((loc, reference)).or_insert(at);
            *slot = (*slot).max(at);
        }
        let mut catalog = Catalog { images: Vec::new(), nodes, blobs };

        // Roots: every tag, then manifests pulled by digest that no tag of
        // their repository already contains.
        let mut roots: Vec<(Locator, Option<Tag>, Digest)> = Vec::new();
        for t in store.tags().into_iter().flatten() {
            roots.push((Locator { registry: t.registry, repo: t.repo }, Some(t.tag), t.digest));
        }
        let mut covered: HashMap<Locator, HashSet<Digest>> = HashMap::new();
        for (loc, _, d) in &roots {
            covered.entry(loc.clone()).or_default().extend(catalog.tree(d).0);
        }
        let mut by_digest: Vec<(Locator, Digest)> = store
            .links()
            .into_iter()
            .flatten()
            .filter(|(loc, d, _)| {
                catalog.nodes.contains_key(d) && !covered.get(loc).is_some_and(|c| c.contains(d))
            })
            .map(|(loc, d, _)| (loc, d))
            .collect();
        by_digest.sort();
        by_digest.dedup();
        // A digest root inside another digest root's tree (a child pulled by digest) is part of it.
        let inside: HashSet<(Locator, Digest)> = by_digest
            .iter()
            .flat_map(|(loc, d)| catalog.tree(d).0.into_iter().skip(1).map(move |child| (loc.clone(), child)))
            .collect();
        roots.extend(by_digest.into_iter().filter(|r| !inside.contains(r)).map(|(loc, d)| (loc, None, d)));

        for (loc, tag, digest) in roots {
            let Some(root) = catalog.nodes.get(&digest) else { continue };
            let (manifests, blobs, missing) = catalog.tree(&digest);
            let size = manifests.iter().filter_map(|d| catalog.nodes.get(d)).map(|n| n.len).sum::<u64>()
                + blobs.iter().filter_map(|d| catalog.blobs.get(d)).sum::<u64>();
            let pulled = std::iter::once(tag.as_ref().map_or_else(|| digest.to_string(), Tag::to_string))
                .chain(manifests.iter().map(Digest::to_string))
                .filter_map(|r| pulls.get(&(loc.clone(), r)).copied())
                .max();
            let platforms = catalog.platforms(store, &digest);
            catalog.images.push(Image {
                media_type: root.media_type.clone(),
                kind: root.kind,
                created: store.manifest_stored_at(&digest),
                loc,
                tag,
                digest,
                platforms,
                manifests,
                blobs,
                size,
                pulled,
                missing,
            });
        }
        catalog.images.sort_by_key(Image::name);
        catalog
    }

    /// The cached manifests under `root` (root first), the blobs they
    /// reference, and what is missing.
    fn tree(&self, root: &Digest) -> (Vec<Digest>, Vec<Digest>, Vec<Missing>) {
        let (mut manifests, mut blobs, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        let mut todo = vec![root.clone()];
        let mut seen = HashSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(node) = self.nodes.get(&d) else { continue };
            manifests.push(d.clone());
            for (r, platform) in &node.references {
                match node.kind {
                    ManifestKind::Index if self.nodes.contains_key(r) => todo.push(r.clone()),
                    ManifestKind::Index => {
                        missing.push(Missing::Manifest { digest: r.clone(), platform: platform.clone() })
                    }
                    ManifestKind::Image => {
                        if !self.blobs.contains_key(r) {
                            missing.push(Missing::Blob { digest: r.clone(), manifest: d.clone() });
                        }
                        blobs.push(r.clone());
                    }
                }
            }
        }
        blobs.sort();
        blobs.dedup();
        (manifests, blobs, missing)
    }

    /// An index's cached children's platforms, or an image's from its config.
    fn platforms(&self, store: &dyn Store, d: &Digest) -> Vec<Platform> {
        let Some(node) = self.nodes.get(d) else { return Vec::new() };
        let mut out: Vec<Platform> = match node.kind {
            ManifestKind::Index => node
                .references
                .iter()
                .filter(|(r, _)| self.nodes.contains_key(r))
                .filter_map(|(_, p)| p.clone())
                .filter(|p| p.os != "unknown")
                .collect(),
            ManifestKind::Image => {
                node.references.first().and_then(|(c, _)| config_platform(store, c)).into_iter().collect()
            }
        };
        out.sort();
        out.dedup();
        out
    }

    /// What pulling `image` for `platforms` offline would lack: an index's
    /// wanted children, and their configs and layers.
    pub fn missing_for(&self, image: &Image, platforms: &Platforms) -> Vec<Missing> {
        let Some(root) = self.nodes.get(&image.digest) else {
            return vec![Missing::Manifest { digest: image.digest.clone(), platform: None }];
        };
        let wanted: Vec<Digest> = match root.kind {
            ManifestKind::Image => vec![image.digest.clone()],
            ManifestKind::Index => root
                .references
                .iter()
                .filter(|(_, p)| p.as_ref().is_none_or(|p| p.os != "unknown") && platforms.wants(p.as_ref()))
                .map(|(d, _)| d.clone())
                .collect(),
        };
        let mut missing = Vec::new();
        for d in wanted {
            let (_, _, lacking) = self.tree(&d);
            if !self.nodes.contains_key(&d) {
                let platform = root.references.iter().find(|(r, _)| *r == d).and_then(|(_, p)| p.clone());
                missing.push(Missing::Manifest { digest: d, platform });
            }
            missing.extend(lacking);
        }
        missing
    }

    /// The image a reference names, if cached.
    pub fn find(&self, loc: &Locator, tag: Option<&Tag>, digest: Option<&Digest>) -> Option<&Image> {
        self.images.iter().find(|i| {
            i.loc == *loc
                && match (digest, tag) {
                    (Some(d), _) => i.digest == *d,
                    (None, Some(t)) => i.tag.as_ref() == Some(t),
                    (None, None) => false,
                }
        })
    }

    /// A cached manifest's bytes and media type are in the store; this says
    /// whether one is known at all.
    pub fn has_manifest(&self, d: &Digest) -> bool {
        self.nodes.contains_key(d)
    }

    pub fn blob_len(&self, d: &Digest) -> Option<u64> {
        self.blobs.get(d).copied()
    }

    /// Manifests and blobs no remaining image uses once `doomed` (indexes
    /// into `images`) are gone, with orphans (referenced by no image at
    /// all) included.
    pub fn unused_after(&self, doomed: &HashSet<usize>) -> (Vec<Digest>, Vec<Digest>) {
        let mut keep_manifests = HashSet::new();
        let mut keep_blobs = HashSet::new();
        for (i, image) in self.images.iter().enumerate() {
            if !doomed.contains(&i) {
                keep_manifests.extend(image.manifests.iter().cloned());
                keep_blobs.extend(image.blobs.iter().cloned());
            }
        }
        let mut manifests: Vec<Digest> =
            self.nodes.keys().filter(|d| !keep_manifests.contains(*d)).cloned().collect();
        // A manifest stored as a blob too (an imported archive's) stays while its manifest does.
        let mut blobs: Vec<Digest> = self
            .blobs
            .keys()
            .filter(|d| !keep_blobs.contains(*d) && !keep_manifests.contains(*d))
            .cloned()
            .collect();
        manifests.sort();
        blobs.sort();
        (manifests, blobs)
    }

    /// Bytes of these manifests and blobs on disk.
    pub fn bytes_of(&self, manifests: &[Digest], blobs: &[Digest]) -> u64 {
        manifests.iter().filter_map(|d| self.nodes.get(d)).map(|n| n.len).sum::<u64>()
            + blobs.iter().filter_map(|d| self.blobs.get(d)).sum::<u64>()
    }

    /// Every manifest and blob byte in the cache.
    pub fn total_bytes(&self) -> u64 {
        self.nodes.values().map(|n| n.len).sum::<u64>() + self.blobs.values().sum::<u64>()
    }
}

/// `os`, `architecture` and `variant` from an image config blob.
fn config_platform(store: &dyn Store, config: &Digest) -> Option<Platform> {
    let (file, len) = store.open_blob(config).ok()??;
    if len > MAX_CONFIG_BYTES {
        return None;
    }
    let mut buf = vec![0; len as usize];
    let mut at = 0;
    while at < buf.len() {
        match file.read_at(&mut buf[at..], at as u64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) => {
                warn!(%config, error = %e, "could not read an image config");
                return None;
            }
        }
    }
    let p: Platform = serde_json::from_slice(&buf[..at]).ok()?;
    (!p.os.is_empty() && !p.architecture.is_empty()).then_some(p)
}
