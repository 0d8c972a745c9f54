use serde::Deserialize;

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
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, over the {MAX_MANIFEST_BYTES} byte limit")]
    TooLarge(usize),
    #[error("manifest is not a JSON object: {0}")]
    NotJson(String),
}

#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

impl ManifestView {
    /// Reads a manifest as served with `content_type`. The media type is the
    /// served one when it is specific, else the document's own `mediaType`,
    /// else inferred from its shape (OCI allows omitting `mediaType`).
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestView, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let shape: Shape =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
        let served = content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| {
            !c.is_empty() && !matches!(*c, "application/json" | "application/octet-stream" | "text/plain")
        });
        let media_type = match (served, shape.media_type.as_deref(), shape.manifests.is_some()) {
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
        Ok(ManifestView { media_type, kind })
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
    fn rejects_garbage_and_huge() {
        assert!(matches!(ManifestView::parse(b"<html>", None), Err(ManifestError::NotJson(_))));
        assert!(matches!(ManifestView::parse(b"[1,2]", None), Err(ManifestError::NotJson(_))));
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(ManifestView::parse(&huge, None), Err(ManifestError::TooLarge(_))));
    }
}
