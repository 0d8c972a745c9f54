//! Writing an oci-archive: an OCI image layout in a tar, streamed from the
//! store. `oci-layout` and `index.json` come first, so a reader that streams
//! sees them before the blobs; then each manifest and blob once, however many
//! images share it. Headers are deterministic (mode 0644, owner 0, mtime 0):
//! the same images make the same bytes.

use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};
use std::io::{BufReader, BufWriter, Write};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;

use super::{
    BLOBS_DIR, BlobReader, CHUNK, Descriptor, ExportImage, INDEX_FILE, NameAnnotations, OCI_INDEX,
    OCI_LAYOUT_FILE,
};
use crate::cache::store::Store;
use crate::oci::Digest;

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes an oci-archive (OCI image layout in a tar) to `out`, streaming
/// blobs from the store. `on_bytes` counts manifest and blob bytes as they
/// are written.
///
/// On error, what was written to `out` is not a complete archive (it has no
/// end-of-archive marker): discard it.
pub fn export(
    store: &dyn Store,
    images: &[ExportImage],
    out: &mut dyn Write,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    let open = Cell::new(true);
    let mut tar = tar::Builder::new(BufWriter::with_capacity(CHUNK, Gate { out, open: &open }));
    match write_entries(&mut tar, store, images, on_bytes) {
        Ok(()) => {
            let mut out = tar.into_inner().context("finishing the archive")?;
            out.flush().context("writing the archive")?;
            Ok(())
        }
        Err(e) => {
            // Dropping the builder writes the end-of-archive marker: keep it
            // (and anything still buffered) from `out`.
            open.set(false);
            drop(tar);
            Err(e)
        }
    }
}

fn write_entries(
    tar: &mut tar::Builder<impl Write>,
    store: &dyn Store,
    images: &[ExportImage],
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    let mut descriptors = Vec::with_capacity(images.len());
    for image in images {
        let Some(root) = image.manifests.first() else {
            bail!("exporting {}: no manifest", image.name);
        };
        for m in &image.manifests {
            let actual = Digest::of(m.digest.algorithm(), &m.bytes);
            if actual != m.digest {
                bail!("exporting {}: manifest {} has content digest {actual}", image.name, m.digest);
            }
        }
        descriptors.push(Descriptor {
            media_type: &root.media_type,
            digest: root.digest.to_string(),
            size: root.bytes.len() as u64,
            annotations: Some(NameAnnotations { containerd: &image.name, ref_name: &image.name }),
        });
    }
    let index =
        serde_json::to_vec(&Index { schema_version: 2, media_type: OCI_INDEX, manifests: descriptors })
            .context("writing index.json")?;

    append_file(tar, OCI_LAYOUT_FILE, OCI_LAYOUT).context("writing oci-layout")?;
    append_file(tar, INDEX_FILE, &index).context("writing index.json")?;
    let algorithms: BTreeSet<&str> = images
        .iter()
        .flat_map(|i| i.manifests.iter().map(|m| &m.digest).chain(i.blobs.iter().map(|(d, _)| d)))
        .map(|d| d.algorithm().as_str())
        .collect();
    append_dir(tar, BLOBS_DIR).context("writing blobs/")?;
    for alg in algorithms {
        append_dir(tar, &format!("{BLOBS_DIR}/{alg}")).with_context(|| format!("writing blobs/{alg}/"))?;
    }

    let mut written: HashSet<&Digest> = HashSet::new();
    for image in images {
        for m in &image.manifests {
            if written.insert(&m.digest) {
                append_file(tar, &blob_path(&m.digest), &m.bytes)
                    .with_context(|| format!("exporting {}: writing manifest {}", image.name, m.digest))?;
                on_bytes(m.bytes.len() as u64);
            }
        }
    }
    for image in images {
        for (d, len) in &image.blobs {
            if written.insert(d) {
                append_blob(tar, store, d, *len, on_bytes)
                    .with_context(|| format!("exporting {}: blob {d}", image.name))?;
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

fn blob_path(d: &Digest) -> String {
    format!("{BLOBS_DIR}/{}/{}", d.algorithm().as_str(), d.hex())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_file(tar: &mut tar::Builder<impl Write>, path: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
}

fn append_dir(tar: &mut tar::Builder<impl Write>, path: &str) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, std::io::empty())
}

/// Streams committed blob `d`, which must be `len` bytes, into the tar.
fn append_blob(
    tar: &mut tar::Builder<impl Write>,
    store: &dyn Store,
    d: &Digest,
    len: u64,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    let (src, actual) =
        store.open_blob(d).context("opening it")?.ok_or_else(|| anyhow!("not in the store"))?;
    if actual != len {
        bail!("{actual} bytes in the store, but {len} expected");
    }
    let reader = BufReader::with_capacity(CHUNK, BlobReader { src, pos: 0, len, on_bytes });
    let mut h = header(tar::EntryType::Regular, 0o644, len);
    tar.append_data(&mut h, blob_path(d), reader).context("writing it")
}

/// Passes writes through while open; once closed, refuses them, so nothing
/// more reaches `out` after a failure.
struct Gate<'a> {
    out: &'a mut dyn Write,
    open: &'a Cell<bool>,
}

impl Write for Gate<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.open.get() {
            return Err(std::io::Error::other("the archive failed; not writing more"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.open.get() {
            return Ok(());
        }
        self.out.flush()
    }
}
