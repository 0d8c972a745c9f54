use std::fmt;

use super::{Digest, ParseError, ParseErrorKind, Part, Reference, RegistryHost, RepoName, Tag};

/// A whole image reference as people write it in image lists and archives:
/// `[registry/]repository[:tag][@digest]`.
///
/// Docker's rules fill in what is left out: no registry component means
/// `docker.io` (`alpine` is `docker.io/library/alpine`), no tag and no digest
/// means `latest`. When both a tag and a digest are given the digest is what
/// is pulled; the tag is kept for naming.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    pub registry: RegistryHost,
    pub repo: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseError::new(Part::RepoName, s, ParseErrorKind::Empty));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(Tag::parse(&rest[last_slash + i + 1..])?)),
            None => (rest, None),
        };
        let (registry, repo) = match name.split_once('/') {
            Some((first, repo)) if RegistryHost::looks_like_host(first) => {
                (RegistryHost::parse(first)?, repo)
            }
            _ => (RegistryHost::parse("docker.io")?, name),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => RegistryHost::parse("docker.io")?,
            _ => registry,
        };
        let repo = registry.canonical_repo(RepoName::parse(repo)?);
        let tag = match (&tag, &digest) {
            (None, None) => Some(Tag::latest()),
            _ => tag,
        };
        Ok(ImageRef { registry, repo, tag, digest })
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            // `parse` always sets one of the two.
            (None, None) => Reference::Tag(Tag::latest()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(s: &str) -> String {
        ImageRef::parse(s).map(|r| r.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn docker_rules_fill_in_what_is_left_out() {
        assert_eq!(show("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(show("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(show("index.docker.io/library/alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(show("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(show("127.0.0.1:5000/a:v1"), "127.0.0.1:5000/a:v1");
        assert_eq!(show("quay.io/x/y:1.0"), "quay.io/x/y:1.0");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(show(&format!("quay.io/x/y@{d}")), format!("quay.io/x/y@{d}"));
        assert_eq!(show(&format!("quay.io/x/y:1@{d}")), format!("quay.io/x/y:1@{d}"));
        let r = ImageRef::parse(&format!("quay.io/x/y:1@{d}")).unwrap();
        assert!(matches!(r.reference(), Reference::Digest(_)), "the digest is what is pulled");
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for s in ["", "UPPER/case", "a/../b", "quay.io/x:bad tag", "x@sha256:short", "host:99999/x", "/x"] {
            assert!(ImageRef::parse(s).is_err(), "{s}");
        }
    }
}
