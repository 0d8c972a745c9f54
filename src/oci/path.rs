use super::{Digest, ParseError, Reference, RegistryHost, RepoName};

/// A `/v2/...` request path, parsed once at the edge.
///
/// Names may have any depth, so the route is found by scanning from the end
/// (`…/manifests/<ref>`, `…/blobs/<digest>`); everything before is the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Path {
    /// `/v2/`: the API version check.
    Base,
    Catalog,
    Manifest {
        name: ImagePath,
        reference: Reference,
    },
    Blob {
        name: ImagePath,
        digest: Digest,
    },
    Upload,
    TagsList {
        name: ImagePath,
    },
    Referrers {
        name: ImagePath,
        digest: Digest,
    },
    Unknown,
}

/// Which part of a path failed to parse, so the server can pick the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Name(ParseError),
    /// A manifest reference: a tag or a digest.
    Reference(ParseError),
    Digest(ParseError),
}

/// The name part of a path: an optional leading registry host (`quay.io/org/app`)
/// and the repository under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePath {
    pub host: Option<RegistryHost>,
    pub repo: RepoName,
}

impl ImagePath {
    pub fn parse(s: &str) -> Result<ImagePath, ParseError> {
        if let Some((first, rest)) = s.split_once('/')
            && RegistryHost::looks_like_host(first)
        {
            return Ok(ImagePath { host: Some(RegistryHost::parse(first)?), repo: RepoName::parse(rest)? });
        }
        Ok(ImagePath { host: None, repo: RepoName::parse(s)? })
    }

    /// The whole path as one repository name, for requests whose registry is
    /// named elsewhere (`?ns=`): there a dotted first component is part of the name.
    pub fn whole_repo(&self) -> Result<RepoName, ParseError> {
        match &self.host {
            None => Ok(self.repo.clone()),
            Some(h) => RepoName::parse(&format!("{h}/{}", self.repo)),
        }
    }
}

impl V2Path {
    /// Parses a raw (still percent-encoded) request path. Percent-encoding is
    /// never decoded: no valid name, tag or digest contains `%`.
    pub fn parse(path: &str) -> Result<V2Path, PathError> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Ok(V2Path::Unknown);
        };
        let rest = match rest {
            "" | "/" => return Ok(V2Path::Base),
            r => match r.strip_prefix('/') {
                Some(r) => r,
                None => return Ok(V2Path::Unknown),
            },
        };
        if rest == "_catalog" {
            return Ok(V2Path::Catalog);
        }
        let name = |n: &str| ImagePath::parse(n).map_err(PathError::Name);
        let digest = |d: &str| Digest::parse(d).map_err(PathError::Digest);

        if rest.contains("/blobs/uploads") {
            return Ok(V2Path::Upload);
        }
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Ok(V2Path::Unknown);
        };
        let Some((n, kind)) = head.rsplit_once('/') else {
            return Ok(V2Path::Unknown);
        };
        Ok(match (kind, last) {
            ("manifests", r) => V2Path::Manifest {
                name: name(n)?,
                reference: Reference::parse(r).map_err(PathError::Reference)?,
            },
            ("blobs", d) => V2Path::Blob { name: name(n)?, digest: digest(d)? },
            ("tags", "list") => V2Path::TagsList { name: name(n)? },
            ("referrers", d) => V2Path::Referrers { name: name(n)?, digest: digest(d)? },
            _ => V2Path::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(path: &str) -> (Option<String>, String, String) {
        match V2Path::parse(path).unwrap() {
            V2Path::Manifest { name, reference } => {
                (name.host.map(|h| h.to_string()), name.repo.to_string(), reference.to_string())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(V2Path::parse("/v2/").unwrap(), V2Path::Base);
        assert_eq!(V2Path::parse("/v2").unwrap(), V2Path::Base);
        assert_eq!(V2Path::parse("/v2/_catalog").unwrap(), V2Path::Catalog);
        assert_eq!(V2Path::parse("/v2x").unwrap(), V2Path::Unknown);
    }

    #[test]
    fn deep_names_and_hosts() {
        assert_eq!(manifest("/v2/a/b/c/manifests/Latest"), (None, "a/b/c".into(), "Latest".into()));
        assert_eq!(
            manifest("/v2/quay.io/org/app/manifests/v1"),
            (Some("quay.io".into()), "org/app".into(), "v1".into())
        );
        assert_eq!(
            manifest("/v2/127.0.0.1:5000/x/manifests/v1"),
            (Some("127.0.0.1:5000".into()), "x".into(), "v1".into())
        );
        assert_eq!(manifest("/v2/localhost/x/manifests/v1").0.as_deref(), Some("localhost"));
        // A single dotted component is a repository, not a host with no name.
        assert_eq!(manifest("/v2/my.app/manifests/v1"), (None, "my.app".into(), "v1".into()));
        // A repository may itself be called "manifests".
        assert_eq!(manifest("/v2/manifests/manifests/v1"), (None, "manifests".into(), "v1".into()));
    }

    #[test]
    fn blobs_uploads_and_referrers() {
        assert!(matches!(V2Path::parse(&format!("/v2/a/blobs/{D}")).unwrap(), V2Path::Blob { .. }));
        assert_eq!(V2Path::parse("/v2/a/blobs/uploads/").unwrap(), V2Path::Upload);
        assert_eq!(V2Path::parse("/v2/a/blobs/uploads/123").unwrap(), V2Path::Upload);
        assert!(matches!(V2Path::parse("/v2/a/tags/list").unwrap(), V2Path::TagsList { .. }));
        assert!(matches!(V2Path::parse(&format!("/v2/a/referrers/{D}")).unwrap(), V2Path::Referrers { .. }));
    }

    #[test]
    fn errors_name_their_part() {
        assert!(matches!(V2Path::parse("/v2/../etc/manifests/x"), Err(PathError::Name(_))));
        assert!(matches!(V2Path::parse("/v2/%2e%2e/manifests/x"), Err(PathError::Name(_))));
        assert!(matches!(V2Path::parse("/v2/a%2Fb/manifests/x"), Err(PathError::Name(_))));
        assert!(matches!(V2Path::parse("/v2/a//b/manifests/x"), Err(PathError::Name(_))));
        assert!(matches!(V2Path::parse("/v2/a/manifests/..."), Err(PathError::Reference(_))));
        assert!(matches!(V2Path::parse("/v2/a/blobs/sha256:abc"), Err(PathError::Digest(_))));
        assert!(matches!(V2Path::parse("/v2/a/blobs/md5:abc"), Err(PathError::Digest(_))));
    }
}
