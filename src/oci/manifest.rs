use serde::Deserialize;

use super::{Digest, Platform};

/// Manifests larger than this are refused, from upstreams and on disk
/// (distribution's own limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// What we ask upstreams for: every manifest kind a client may want, so the
/// cached copy serves containerd, skopeo and docker alike.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, \
    application/vnd.docker.distribution.manifest.v1+json;q=0.5";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A manifest list or OCI index: points at per-platform manifests.
    Index,
    /// An image manifest: points at a config and layers.
    Image,
}

/// The few facts we read from a manifest. The bytes themselves are kept
/// exactly as received and never re-serialised (digests and signatures survive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestView {
    pub media_type: String,
    pub kind: ManifestKind,
    /// What it points at: child manifests of an index; config and layers of
    /// an image. Descriptors with an unreadable digest are left out.
    pub references: Vec<Reference>,
}

/// Content a manifest points at, with the size its descriptor states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub digest: Digest,
    /// `None` for schema 1 layers, whose descriptors carry no size.
    pub size: Option<u64>,
    /// What an index says a child manifest is for.
    pub platform: Option<Platform>,
    /// The descriptor's media type, when stated.
    pub media_type: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, over the {MAX_MANIFEST_BYTES} byte limit")]
    TooLarge(usize),
    #[error("manifest is not a JSON object: {0}")]
    NotJson(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    /// Docker schema 1.
    fs_layers: Option<Vec<Schema1Layer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    size: Option<u64>,
    media_type: Option<String>,
    /// Read leniently: an odd platform never makes the manifest unreadable.
    #[serde(default)]
    platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Schema1Layer {
    blob_sum: String,
}

impl ManifestView {
    /// Reads a manifest as served with `content_type`. The media type is the
    /// document's own `mediaType` when it has one (a server cannot relabel
    /// what the bytes say they are), else the served type when specific, else
    /// inferred from its shape (OCI allows omitting `mediaType`).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestView, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let shape: Shape =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let served = content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| {
            !c.is_empty() && !matches!(*c, "application/json" | "application/octet-stream" | "text/plain")
        });
        let media_type = match (shape.media_type.as_deref(), served, shape.manifests.is_some()) {
            (Some(m), _, _) | (None, Some(m), _) => m.to_owned(),
            (None, None, true) => OCI_INDEX.to_owned(),
            (None, None, false) => OCI_MANIFEST.to_owned(),
        };
        let kind = if shape.manifests.is_some() || media_type.contains("index") || media_type.contains("list")
        {
            ManifestKind::Index
        } else {
            ManifestKind::Image
        };
        let descriptors = shape
            .manifests
            .into_iter()
            .flatten()
            .chain(shape.config)
            .chain(shape.layers.into_iter().flatten());
        let schema1 = shape.fs_layers.into_iter().flatten().map(|l| Descriptor {
            digest: l.blob_sum,
            size: None,
            media_type: None,
            platform: None,
        });
        let mut references: Vec<Reference> = descriptors
            .chain(schema1)
            .filter_map(|d| {
                Some(Reference {
                    digest: Digest::parse(&d.digest).ok()?,
                    size: d.size,
                    platform: d.platform.and_then(|p| serde_json::from_value(p).ok()),
                    media_type: d.media_type,
                })
            })
            .collect();
        references.dedup();
        Ok(ManifestView { media_type, kind, references })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_type_wins() {
        let v = ManifestView::parse(
            br#"{"schemaVersion":2}"#,
            Some("application/vnd.docker.distribution.manifest.v2+json"),
        )
        .unwrap();
        assert_eq!(v.media_type, "application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(v.kind, ManifestKind::Image);
    }

    #[test]
    fn inferred_from_shape() {
        let v =
            ManifestView::parse(br#"{"schemaVersion":2,"manifests":[]}"#, Some("application/json")).unwrap();
        assert_eq!((v.media_type.as_str(), v.kind), (OCI_INDEX, ManifestKind::Index));
        let v = ManifestView::parse(br#"{"schemaVersion":2,"mediaType":"x/y"}"#, None).unwrap();
        assert_eq!(v.media_type, "x/y");
    }

    #[test]
    fn own_media_type_beats_the_served_one() {
        let v = ManifestView::parse(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            Some("application/vnd.docker.distribution.manifest.v2+json"),
        )
        .unwrap();
        assert_eq!(v.media_type, OCI_MANIFEST);
    }

    #[test]
    fn lists_references() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":3}},"layers":[{{"digest":"{}","size":5}},{{"digest":"bogus","size":1}}]}}"#,
            d('a'),
            d('b')
        );
        let v = ManifestView::parse(json.as_bytes(), None).unwrap();
        let refs: Vec<(String, Option<u64>)> =
            v.references.iter().map(|r| (r.digest.to_string(), r.size)).collect();
        assert_eq!(refs, vec![(d('a'), Some(3)), (d('b'), Some(5))]);
    }

    #[test]
    fn rejects_garbage_and_huge() {
        assert!(matches!(ManifestView::parse(b"<html>", None), Err(ManifestError::NotJson(_))));
        assert!(matches!(ManifestView::parse(b"[1,2]", None), Err(ManifestError::NotJson(_))));
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(ManifestView::parse(&huge, None), Err(ManifestError::TooLarge(_))));
    }
}
