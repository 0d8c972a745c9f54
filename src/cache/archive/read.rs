//! Reading archives: one streaming pass over a tar (or the blobs a layout
//! directory's index reaches), then resolving what was read into images.
//!
//! A tar is read once, front to back, so its index may come last and memory
//! stays flat however large it is. Entries are sorted on the way:
//! - `blobs/<alg>/<hex>`: streamed into the store, committed only if the
//!   bytes hash to the name;
//! - JSON documents and other small files: kept in memory, so a legacy
//!   docker-save's `VERSION` and `json` files never reach the store; a legacy
//!   config is committed once an image is found to refer to it;
//! - other files (legacy `<id>/layer.tar`): streamed into the store under the
//!   sha256 of their bytes;
//! - symbolic and hard links: remembered as aliases between entry names
//!   (docker-save links a layer shared by two images), never followed on disk;
//! - anything else (directories, devices): ignored.
//!
//! No entry's name is ever used as a path to write to; names with `..` or a
//! leading `/` are refused all the same, since no image tool writes them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use serde::Deserialize;
use tracing::debug;

use super::{
    ArchivedImage, BLOBS_DIR, CHUNK, Counting, DOCKER_MANIFEST_FILE, Descriptor, INDEX_FILE,
    NAME_ANNOTATIONS, OCI_CONFIG, OCI_LAYOUT_FILE, OCI_MANIFEST, import_anonymous_blob, import_named_blob,
    layer_media_type, read_exact_at,
};
use crate::cache::store::{Store, StoredManifest};
use crate::oci::{Algorithm, Digest, MAX_MANIFEST_BYTES, ManifestKind, ManifestView};

const NOT_AN_ARCHIVE: &str = "not a docker-save or OCI archive (no manifest.json or index.json)";
/// Largest JSON document kept in memory (`manifest.json`, `index.json`, a legacy config).
const MAX_JSON_BYTES: u64 = MAX_MANIFEST_BYTES as u64;
/// Other files up to this size are kept in memory until the pass ends.
const MAX_SMALL_FILE: u64 = 64 * 1024;
/// All a pass keeps in memory, together: a bound however many entries there are.
const MAX_HELD_BYTES: u64 = 64 * 1024 * 1024;
/// What one entry costs in the pass's maps besides its name.
const ENTRY_COST: u64 = 128;
/// How deep indexes may nest under an image's root.
const MAX_DEPTH: usize = 4;
/// How many links a name may go through before it is given up.
const MAX_LINK_HOPS: usize = 16;

/// Reads the archive at `path` into `store` and lists the images it holds.
///
/// `path` is an OCI image layout directory, or a file holding a tar
/// (docker-save or oci-archive), plain or gzip-compressed. Every blob the
/// images need is in the store when this returns; the manifests are returned,
/// not stored. `on_bytes` counts the bytes read from the file as they stream
/// (compressed bytes for a gzip file; blob bytes for a directory).
///
/// On error, blobs already verified and committed stay (they are correct
/// content); nothing unverified is committed and no temp file is left.
pub fn import(
    path: &Path,
    store: &dyn Store,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Vec<ArchivedImage>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: reading the archive", path.display()))?;
    if meta.is_dir() { import_layout_dir(path, store, on_bytes) } else { import_file(path, store, on_bytes) }
}

fn import_file(
    path: &Path,
    store: &dyn Store,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Vec<ArchivedImage>> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("{shown}: opening the archive"))?;
    let mut input = BufReader::with_capacity(CHUNK, Counting { inner: file, on_bytes });
    let gzip =
        input.fill_buf().with_context(|| format!("{shown}: reading the archive"))?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + '_> =
        if gzip { Box::new(flate2::bufread::MultiGzDecoder::new(input)) } else { Box::new(input) };
    let mut pass = TarPass {
        archive: path,
        store,
        files: HashMap::new(),
        links: HashMap::new(),
        held: 0,
        buf: vec![0; CHUNK],
    };
    pass.run(reader, if gzip { "gzip-compressed tar" } else { "tar" })?;
    pass.resolve()
}

/// What a tar pass kept of a regular file.
enum Held {
    /// Committed to the store: a `blobs/` entry, or a large file under the
    /// digest of its bytes.
    Stored(Digest),
    /// Kept in memory, committed only if an image refers to it.
    Memory(Vec<u8>),
}

struct TarPass<'a> {
    archive: &'a Path,
    store: &'a dyn Store,
    /// Regular files by normalised name.
    files: HashMap<String, Held>,
    /// Link name → the entry name it points at.
    links: HashMap<String, String>,
    /// Bytes of `Held::Memory`, together.
    held: u64,
    buf: Vec<u8>,
}

impl TarPass<'_> {
    fn run(&mut self, reader: impl Read, format: &str) -> anyhow::Result<()> {
        let shown = self.archive.display();
        let mut tar = tar::Archive::new(reader);
        let entries = tar.entries().with_context(|| format!("{shown}: reading the {format}"))?;
        let mut seen_any = false;
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                // The error quotes the bytes it choked on: keep them printable.
                Err(e) if !seen_any => {
                    bail!("{shown}: {NOT_AN_ARCHIVE} (reading it as a tar: {})", e.to_string().escape_debug())
                }
                Err(e) => return Err(e).with_context(|| format!("{shown}: reading the {format}")),
            };
            seen_any = true;
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> anyhow::Result<()> {
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(name) = normalize(&raw) else {
            bail!(
                "{}: entry '{raw}': an absolute or '..' path, which no image archive has; refusing the archive",
                self.archive.display()
            );
        };
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(entry, name)
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                let resolved = target.as_deref().and_then(|t| {
                    if kind == tar::EntryType::Symlink { symlink_target(&name, t) } else { normalize(t) }
                });
                match resolved {
                    Some(to) if !to.is_empty() => {
                        self.charge(ENTRY_COST + (name.len() + to.len()) as u64, &name)?;
                        self.links.insert(name, to);
                    }
                    _ => {
                        debug!(archive = %self.archive.display(), entry = %name, target = ?target, "ignoring a link that leads out of the archive")
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Counts what the pass keeps in memory: every entry's name (an archive
    /// of millions of empty entries is a bomb too) and the small files.
    fn charge(&mut self, bytes: u64, name: &str) -> anyhow::Result<()> {
        self.held += bytes;
        if self.held > MAX_HELD_BYTES {
            bail!(
                "{}: entry '{name}': the archive's entries, JSON documents and small files come to over {MAX_HELD_BYTES} bytes of bookkeeping; not an image archive?",
                self.archive.display()
            );
        }
        Ok(())
    }

    fn file<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: String) -> anyhow::Result<()> {
        let what = format!("{}: entry '{name}'", self.archive.display());
        self.charge(ENTRY_COST + name.len() as u64, &name)?;
        if let Some(d) = blob_name(&name) {
            import_named_blob(self.store, &d, entry, &mut self.buf, &what)?;
            self.files.insert(name, Held::Stored(d));
            return Ok(());
        }
        let size = entry.size();
        let json = name.ends_with(".json") || name == OCI_LAYOUT_FILE;
        if json && size > MAX_JSON_BYTES {
            bail!("{what}: {size} bytes, over the {MAX_JSON_BYTES} byte limit for a JSON document");
        }
        if json || size <= MAX_SMALL_FILE {
            self.charge(size, &name)?;
            // `size` is at most MAX_JSON_BYTES here.
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            Read::by_ref(entry)
                .take(size)
                .read_to_end(&mut bytes)
                .with_context(|| format!("{what}: reading"))?;
            self.files.insert(name, Held::Memory(bytes));
        } else {
            let got = import_anonymous_blob(self.store, entry, &mut self.buf, &what)?;
            self.files.insert(name, Held::Stored(got.digest));
        }
        Ok(())
    }

    /// The regular file `name` leads to, through links.
    fn lookup(&self, name: &str) -> Option<&Held> {
        let mut name = name;
        for _ in 0..MAX_LINK_HOPS {
            if let Some(held) = self.files.get(name) {
                return Some(held);
            }
            name = self.links.get(name)?;
        }
        None
    }

    /// A document the archive holds under `name`, at most MAX_JSON_BYTES.
    fn document(&self, name: &str) -> anyhow::Result<Option<Cow<'_, [u8]>>> {
        match self.lookup(name) {
            None => Ok(None),
            Some(Held::Memory(bytes)) => Ok(Some(Cow::Borrowed(bytes))),
            Some(Held::Stored(d)) => {
                let what = format!("{}: entry '{name}'", self.archive.display());
                Ok(Some(Cow::Owned(read_stored(self.store, d, MAX_JSON_BYTES).with_context(|| what)?)))
            }
        }
    }

    fn resolve(self) -> anyhow::Result<Vec<ArchivedImage>> {
        if let Some(index) = self.document(INDEX_FILE)? {
            return resolve_layout(self.archive, &index, self.store, &mut Committed(self.store));
        }
        if let Some(manifest) = self.document(DOCKER_MANIFEST_FILE)? {
            return self.resolve_docker(&manifest);
        }
        bail!("{}: {NOT_AN_ARCHIVE}", self.archive.display())
    }

    /// Synthesises an OCI manifest for each image of a docker-save `manifest.json`.
    fn resolve_docker(&self, manifest: &[u8]) -> anyhow::Result<Vec<ArchivedImage>> {
        let shown = self.archive.display();
        let entries: Vec<DockerSaveEntry> = serde_json::from_slice(manifest).with_context(|| {
            format!("{shown}: entry '{DOCKER_MANIFEST_FILE}': not a docker-save manifest")
        })?;
        let mut images = Vec::with_capacity(entries.len());
        for e in entries {
            let names = e.repo_tags.unwrap_or_default();
            let label = names.first().cloned().unwrap_or_else(|| e.config.clone());
            let config =
                self.content(&e.config).with_context(|| format!("{shown}: image {label}: config"))?;
            let mut layers = Vec::with_capacity(e.layers.len());
            for l in &e.layers {
                let layer = self.content(l).with_context(|| format!("{shown}: image {label}: layer"))?;
                layers.push(Descriptor {
                    media_type: layer.media_type,
                    digest: layer.digest.to_string(),
                    size: layer.size,
                    annotations: None,
                });
            }
            let synthesised = ImageManifest {
                schema_version: 2,
                media_type: OCI_MANIFEST,
                config: Descriptor {
                    media_type: OCI_CONFIG,
                    digest: config.digest.to_string(),
                    size: config.size,
                    annotations: None,
                },
                layers,
            };
            let bytes = serde_json::to_vec(&synthesised)
                .with_context(|| format!("{shown}: image {label}: writing its manifest"))?;
            let digest = Digest::of(Algorithm::Sha256, &bytes);
            let manifest =
                StoredManifest { digest, media_type: OCI_MANIFEST.to_owned(), bytes: Bytes::from(bytes) };
            images.push(ArchivedImage { names, manifests: vec![manifest] });
        }
        Ok(images)
    }

    /// The blob a docker-save manifest names by path, committed to the store.
    fn content(&self, path: &str) -> anyhow::Result<Content> {
        let key = normalize(path).ok_or_else(|| anyhow!("'{path}' is outside the archive"))?;
        let held = self.lookup(&key).ok_or_else(|| anyhow!("'{path}' is not in the archive"))?;
        match held {
            Held::Memory(bytes) => {
                let digest = Digest::of(Algorithm::Sha256, bytes);
                self.store
                    .put_blob(&digest, bytes)
                    .with_context(|| format!("'{path}': storing blob {digest}"))?;
                Ok(Content { digest, size: bytes.len() as u64, media_type: layer_media_type(bytes) })
            }
            Held::Stored(digest) => {
                let (src, size) = self
                    .store
                    .open_blob(digest)
                    .with_context(|| format!("'{path}': opening blob {digest}"))?
                    .ok_or_else(|| anyhow!("'{path}': blob {digest} vanished from the store"))?;
                let mut head = [0u8; 4];
                let n = head.len().min(usize::try_from(size).unwrap_or(usize::MAX));
                read_exact_at(&*src, &mut head[..n], 0)
                    .with_context(|| format!("'{path}': reading blob {digest}"))?;
                Ok(Content { digest: digest.clone(), size, media_type: layer_media_type(&head[..n]) })
            }
        }
    }
}

/// A blob a docker-save manifest names, as committed.
struct Content {
    digest: Digest,
    size: u64,
    /// As a layer: the type its first bytes say.
    media_type: &'static str,
}

/// One image of a docker-save `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// The OCI image manifest synthesised for a docker-save image; field order is
/// the serialised order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

/// An OCI `index.json`, as much as import reads of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    size: Option<u64>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

/// Where the blobs an index reaches come from.
trait Source {
    /// Makes sure `d` is in the store, from the archive if need be; `false`
    /// when neither has it.
    fn ensure(&mut self, d: &Digest) -> anyhow::Result<bool>;
}

/// A tar already passed: whatever it held is committed.
struct Committed<'a>(&'a dyn Store);

impl Source for Committed<'_> {
    fn ensure(&mut self, d: &Digest) -> anyhow::Result<bool> {
        Ok(self.0.blob_len(d).with_context(|| format!("looking up blob {d}"))?.is_some())
    }
}

/// An OCI image layout directory: blobs are imported as the index reaches them.
struct LayoutDir<'a> {
    root: &'a Path,
    store: &'a dyn Store,
    on_bytes: &'a (dyn Fn(u64) + Sync),
    buf: Vec<u8>,
}

impl Source for LayoutDir<'_> {
    fn ensure(&mut self, d: &Digest) -> anyhow::Result<bool> {
        if self.store.blob_len(d).with_context(|| format!("looking up blob {d}"))?.is_some() {
            return Ok(true);
        }
        // A digest's parts are an algorithm name and lowercase hex: this stays under `root`.
        let path = self.root.join(BLOBS_DIR).join(d.algorithm().as_str()).join(d.hex());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("{}: opening", path.display())),
        };
        let mut src = Counting { inner: file, on_bytes: self.on_bytes };
        import_named_blob(self.store, d, &mut src, &mut self.buf, &path.display().to_string())?;
        Ok(true)
    }
}

fn import_layout_dir(
    dir: &Path,
    store: &dyn Store,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Vec<ArchivedImage>> {
    let index_path = dir.join(INDEX_FILE);
    let index = match read_file_capped(&index_path, MAX_JSON_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}: {NOT_AN_ARCHIVE}", dir.display()),
        Err(e) => return Err(e).with_context(|| format!("{}: reading", index_path.display())),
    };
    on_bytes(index.len() as u64);
    let mut source = LayoutDir { root: dir, store, on_bytes, buf: vec![0; CHUNK] };
    resolve_layout(dir, &index, store, &mut source)
}

/// The images an OCI layout's `index.json` lists, each with the manifests under it.
fn resolve_layout(
    archive: &Path,
    index: &[u8],
    store: &dyn Store,
    source: &mut dyn Source,
) -> anyhow::Result<Vec<ArchivedImage>> {
    let shown = archive.display();
    let doc: IndexDoc = serde_json::from_slice(index)
        .with_context(|| format!("{shown}: entry '{INDEX_FILE}': not an OCI image index"))?;
    // Descriptors of the same manifest (one per tag) make one image with several names.
    let mut roots: Vec<Root> = Vec::new();
    for e in doc.manifests {
        let digest = Digest::parse(&e.digest).with_context(|| format!("{shown}: entry '{INDEX_FILE}'"))?;
        let name = e
            .annotations
            .as_ref()
            .and_then(|a| NAME_ANNOTATIONS.iter().find_map(|k| a.get(*k)))
            .filter(|n| !n.is_empty())
            .cloned();
        let root = match roots.iter_mut().position(|r| r.digest == digest) {
            Some(i) => &mut roots[i],
            None => {
                roots.push(Root { digest, media_type: e.media_type, size: e.size, names: Vec::new() });
                let last = roots.len() - 1;
                &mut roots[last]
            }
        };
        if let Some(name) = name
            && !root.names.contains(&name)
        {
            root.names.push(name);
        }
    }
    let mut images = Vec::with_capacity(roots.len());
    for root in roots {
        let label = root.names.first().cloned().unwrap_or_else(|| root.digest.to_string());
        let mut walk =
            Walk { archive, store, source: &mut *source, label, manifests: Vec::new(), seen: HashSet::new() };
        if !walk.manifest(&root.digest, root.media_type.as_deref(), root.size, 0)? {
            bail!("{shown}: image {}: its manifest {} is not in the archive", walk.label, root.digest);
        }
        images.push(ArchivedImage { names: root.names, manifests: walk.manifests });
    }
    Ok(images)
}

/// An image listed in `index.json`.
struct Root {
    digest: Digest,
    media_type: Option<String>,
    size: Option<u64>,
    names: Vec<String>,
}

/// Collecting one image's manifests, root first.
struct Walk<'a> {
    archive: &'a Path,
    store: &'a dyn Store,
    source: &'a mut dyn Source,
    /// The image, for messages.
    label: String,
    manifests: Vec<StoredManifest>,
    seen: HashSet<Digest>,
}

impl Walk<'_> {
    /// Adds manifest `d` and what is under it; `false` if the archive does not have it.
    fn manifest(
        &mut self,
        d: &Digest,
        media_type: Option<&str>,
        size: Option<u64>,
        depth: usize,
    ) -> anyhow::Result<bool> {
        let what = format!("{}: image {}: manifest {d}", self.archive.display(), self.label);
        let context = || what.clone();
        if depth > MAX_DEPTH {
            bail!("{what}: indexes nest more than {MAX_DEPTH} deep");
        }
        if !self.source.ensure(d).with_context(context)? {
            return Ok(false);
        }
        let bytes = read_stored(self.store, d, MAX_MANIFEST_BYTES as u64).with_context(context)?;
        if let Some(size) = size
            && size != bytes.len() as u64
        {
            bail!("{what}: {} bytes, but its descriptor says {size}", bytes.len());
        }
        let view = ManifestView::parse(&bytes, media_type).with_context(context)?;
        if self.seen.insert(d.clone()) {
            self.manifests.push(StoredManifest {
                digest: d.clone(),
                media_type: view.media_type.clone(),
                bytes: Bytes::from(bytes),
            });
        }
        match view.kind {
            ManifestKind::Index => {
                let mut present = 0;
                for r in &view.references {
                    if self.manifest(&r.digest, r.media_type.as_deref(), r.size, depth + 1)? {
                        present += 1;
                    } else {
                        // An archive of one platform of a multi-platform image.
                        debug!(archive = %self.archive.display(), image = %self.label, manifest = %r.digest, "platform manifest not in the archive; left out");
                    }
                }
                if present == 0 && !view.references.is_empty() {
                    bail!("{what}: an index none of whose manifests is in the archive");
                }
            }
            ManifestKind::Image => {
                for r in &view.references {
                    let len = match self.source.ensure(&r.digest).with_context(context)? {
                        true => self.store.blob_len(&r.digest).with_context(context)?,
                        false => None,
                    };
                    let Some(len) = len else {
                        if r.media_type.as_deref().is_some_and(non_distributable) {
                            // Fetched from its URLs by the client, never archived.
                            continue;
                        }
                        bail!("{what}: blob {} is not in the archive", r.digest);
                    };
                    if let Some(size) = r.size
                        && size != len
                    {
                        bail!("{what}: blob {} is {len} bytes, but the manifest says {size}", r.digest);
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Layers an archive leaves out by design (Windows base layers).
fn non_distributable(media_type: &str) -> bool {
    media_type.contains(".foreign.") || media_type.contains(".nondistributable.")
}

/// A committed blob's bytes, if at most `limit` and matching its digest.
fn read_stored(store: &dyn Store, d: &Digest, limit: u64) -> anyhow::Result<Vec<u8>> {
    let (src, len) = store
        .open_blob(d)
        .with_context(|| format!("opening blob {d}"))?
        .ok_or_else(|| anyhow!("blob {d} is not in the store"))?;
    if len > limit {
        bail!("blob {d} is {len} bytes, over the {limit} byte limit for a JSON document");
    }
    let mut bytes = vec![0; usize::try_from(len)?];
    read_exact_at(&*src, &mut bytes, 0).with_context(|| format!("reading blob {d}"))?;
    let actual = Digest::of(d.algorithm(), &bytes);
    if actual != *d {
        bail!("blob {d} in the store has content digest {actual}");
    }
    Ok(bytes)
}

/// A file of at most `limit` bytes.
fn read_file_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over the {limit} byte limit for a JSON document"),
        ));
    }
    Ok(bytes)
}

/// `blobs/<alg>/<hex>` → the digest it names.
fn blob_name(name: &str) -> Option<Digest> {
    let mut parts = name.split('/');
    let (Some(BLOBS_DIR), Some(alg), Some(hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// An entry name as plain relative components (`./` and empty components
/// dropped); `None` for an absolute name or one with a `..` component.
fn normalize(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The entry a symbolic link named `link` (normalised) pointing at `target`
/// leads to; `None` when that is outside the archive.
fn symlink_target(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').filter(|c| !c.is_empty()).collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(normalize("./blobs/sha256/x").as_deref(), Some("blobs/sha256/x"));
        assert_eq!(normalize("a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("./").as_deref(), Some(""));
        assert_eq!(normalize("/abs"), None);
        assert_eq!(normalize("../../etc/x"), None);
        assert_eq!(normalize("a/../b"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_archive_only() {
        assert_eq!(symlink_target("b/layer.tar", "../a/layer.tar").as_deref(), Some("a/layer.tar"));
        assert_eq!(symlink_target("layer.tar", "x").as_deref(), Some("x"));
        assert_eq!(symlink_target("b/layer.tar", "../../etc/passwd"), None);
        assert_eq!(symlink_target("b/layer.tar", "/etc/passwd"), None);
    }

    #[test]
    fn blob_names() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(blob_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(blob_name(&format!("blobs/sha256/{hex}/x")).is_none());
        assert!(blob_name(&format!("other/sha256/{hex}")).is_none());
        assert!(blob_name("blobs/sha256/../../x").is_none());
    }
}
