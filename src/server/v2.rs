//! The `/v2/` API: parse the path once into [`V2Path`], pick the upstream,
//! ask the cache, write the response.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};

use super::error::{ErrorCode, OciError, Subject};
use super::{AppState, Namespace, RouteInfo};
use crate::cache::{Blob, CacheOutcome, Locator};
use crate::metrics::Endpoint;
use crate::oci::{Digest, ImagePath, RegistryHost, V2Path};

pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

pub async fn handle(app: &AppState, req: &http::request::Parts) -> Response {
    let ns = match namespace(&req.uri) {
        Ok(ns) => ns,
        Err(e) => return e.into_response(),
    };
    let mut route = RouteInfo::default();
    let mut resp = match dispatch(app, &req.method, &req.uri, &req.headers, ns.as_ref(), &mut route).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(route);
    if let Some(ns) = ns {
        if let Ok(v) = HeaderValue::from_str(ns.as_str()) {
            resp.headers_mut().insert("oci-namespace", v);
        }
        resp.extensions_mut().insert(Namespace(ns));
    }
    resp
}

async fn dispatch(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    ns: Option<&RegistryHost>,
    route: &mut RouteInfo,
) -> Result<Response, OciError> {
    let path = V2Path::parse(uri.path());
    route.endpoint = match &path {
        Ok(V2Path::Base) => Endpoint::Base,
        Ok(V2Path::Catalog) => Endpoint::Catalog,
        Ok(V2Path::Manifest { .. }) => Endpoint::Manifests,
        Ok(V2Path::Blob { .. }) => Endpoint::Blobs,
        Ok(V2Path::Upload) => Endpoint::Uploads,
        Ok(V2Path::TagsList { .. }) => Endpoint::Tags,
        Ok(V2Path::Referrers { .. }) => Endpoint::Referrers,
        Ok(V2Path::Unknown) | Err(_) => Endpoint::Other,
    };
    // A malformed name or reference is a 400 whatever the method (the OCI
    // conformance suite PUTs `manifests/sha256:totallywrong`); only then is a
    // write to a well-formed path refused as unsupported.
    let path = path.map_err(OciError::from_path)?;
    if method != Method::GET && method != Method::HEAD {
        return Err(OciError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported: this registry is a pull-only mirror"),
        ));
    }
    let head = method == Method::HEAD;
    match path {
        V2Path::Base => Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response()),
        V2Path::Catalog => {
            Err(OciError::new(ErrorCode::NotOffered, "the catalog is not offered by this mirror"))
        }
        V2Path::Upload => Err(OciError::new(
            ErrorCode::Unsupported,
            "uploads are not supported: this registry is a pull-only mirror",
        )),
        V2Path::TagsList { name } => {
            let loc = locate(app, ns, &name)?;
            route.registry = Some(loc.registry.clone());
            let query = pagination(uri);
            let (body, outcome) = app
                .cache
                .tags(&loc, query.as_deref())
                .await
                .map_err(|e| OciError::from_cache(&e, Subject::Repository))?;
            let resp = Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len())
                .extension(outcome);
            resp.body(if head { Body::empty() } else { Body::from(body) }).map_err(internal)
        }
        V2Path::Referrers { .. } => {
            Err(OciError::new(ErrorCode::NotOffered, "the referrers API is not offered by this mirror"))
        }
        V2Path::Unknown => {
            Err(OciError::new(ErrorCode::NotOffered, format!("no such endpoint: {}", uri.path())))
        }
        V2Path::Manifest { name, reference } => {
            let loc = locate(app, ns, &name)?;
            route.registry = Some(loc.registry.clone());
            route.tag_pull = matches!(reference, crate::oci::Reference::Tag(_));
            let (m, outcome) = app
                .cache
                .manifest(&loc, &reference)
                .await
                .map_err(|e| OciError::from_cache(&e, Subject::Manifest))?;
            if !accepts(headers, &m.media_type) {
                return Err(OciError::new(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "the manifest is {}, which the request's Accept header does not list",
                        m.media_type
                    ),
                ));
            }
            let body = match head {
                true => Body::empty(),
                false => Body::from(
                    app.cache
                        .manifest_body(&m)
                        .await
                        .map_err(|e| OciError::from_cache(&e, Subject::Manifest))?,
                ),
            };
            // The well-known types are static: no header value built per request.
            let content_type = match &m.media_type {
                std::borrow::Cow::Borrowed(known) => HeaderValue::from_static(known),
                std::borrow::Cow::Owned(other) => {
                    HeaderValue::from_str(other).map_err(|e| internal(e.into()))?
                }
            };
            let resp = Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CONTENT_LENGTH, m.len)
                .header(DOCKER_CONTENT_DIGEST, m.digest.to_string())
                .extension(outcome);
            resp.body(body).map_err(internal)
        }
        V2Path::Blob { name, digest } => {
            let loc = locate(app, ns, &name)?;
            route.registry = Some(loc.registry.clone());
            if head {
                blob_head(app, &loc, &digest).await
            } else {
                blob_get(app, &loc, &digest, headers).await
            }
        }
    }
}

async fn blob_head(app: &AppState, loc: &Locator, digest: &Digest) -> Result<Response, OciError> {
    let (size, outcome) =
        app.cache.blob_size(loc, digest).await.map_err(|e| OciError::from_cache(&e, Subject::Blob))?;
    let mut resp = blob_headers(digest).extension(outcome);
    if let Some(size) = size {
        resp = resp.header(header::CONTENT_LENGTH, size);
    }
    resp.body(Body::empty()).map_err(internal)
}

async fn blob_get(
    app: &AppState,
    loc: &Locator,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response, OciError> {
    let redirect =
        app.cache.blob_redirect(loc, digest).await.map_err(|e| OciError::from_cache(&e, Subject::Blob))?;
    if let Some(url) = redirect {
        // As registries with a CDN do: the client fetches the bytes from the bucket.
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, url)
            .header(DOCKER_CONTENT_DIGEST, digest.to_string())
            .extension(CacheOutcome::Hit)
            .body(Body::empty())
            .map_err(internal);
    }
    let blob = app.cache.blob(loc, digest).await.map_err(|e| OciError::from_cache(&e, Subject::Blob))?;
    blob_response(digest, blob, headers)
}

/// A blob's response: whole, or the one range asked for when its size is known.
pub(super) fn blob_response(digest: &Digest, blob: Blob, headers: &HeaderMap) -> Result<Response, OciError> {
    let outcome: CacheOutcome = blob.outcome;
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap_or(""));
    let resp = blob_headers(digest).extension(outcome);
    let (resp, start, end) = match (range, blob.size) {
        (Some(r), Some(size)) => {
            let (start, end) = byte_range(r, size)?;
            let resp = resp
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1))
                .header(header::CONTENT_LENGTH, end - start);
            (resp, start, end)
        }
        (_, Some(size)) => (resp.header(header::CONTENT_LENGTH, size), 0, size),
        // Size not announced by the upstream: stream to the end, ignoring any Range.
        (_, None) => (resp, 0, u64::MAX),
    };
    let body = match blob.reader.whole(start, end) {
        Some(bytes) => Body::from(bytes),
        None => Body::from_stream(blob.reader.stream(start, end)),
    };
    resp.body(body).map_err(internal)
}

/// Whether the client takes `media_type`: every `Accept` line counts (skopeo
/// and podman send one type per line); no `Accept` at all takes anything.
/// A registry answers a type the client did not ask for with a 404, and a
/// client then tries its next host, so the mirror does the same.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut listed = false;
    for item in headers.get_all(header::ACCEPT).iter().flat_map(|v| v.to_str().unwrap_or("").split(',')) {
        let t = item.split(';').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        listed = true;
        let wildcard = t.strip_suffix('*').filter(|prefix| prefix.ends_with('/'));
        if t == "*/*"
            || t.eq_ignore_ascii_case(media_type)
            || wildcard.is_some_and(|p| media_type.starts_with(p))
        {
            return true;
        }
    }
    !listed
}

fn blob_headers(digest: &Digest) -> http::response::Builder {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
}

/// A single `bytes=` range as `start..end` (end exclusive). Several ranges are
/// answered with the first only being honoured would be wrong, so they are
/// refused like any unsatisfiable range.
fn byte_range(value: &str, size: u64) -> Result<(u64, u64), OciError> {
    let unsatisfiable = || {
        OciError::new(
            ErrorCode::RangeInvalid,
            format!("range '{value}' cannot be satisfied for a blob of {size} bytes"),
        )
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
    };
    let ranges = http_range_header::parse_range_header(value).map_err(|_| unsatisfiable())?;
    let ranges = ranges.validate(size).map_err(|_| unsatisfiable())?;
    match ranges.as_slice() {
        [r] => Ok((*r.start(), r.end() + 1)),
        _ => Err(unsatisfiable()),
    }
}

/// The client's `n`/`last` tag-list pagination, re-encoded for the upstream
/// (everything else in the query, `ns` included, is ours).
fn pagination(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let mut out = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "n" || k == "last") {
        out.append_pair(&k, &v);
        any = true;
    }
    any.then(|| out.finish())
}

/// The `ns` query parameter containerd sends (`?ns=docker.io`).
fn namespace(uri: &Uri) -> Result<Option<RegistryHost>, OciError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let Some((_, ns)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ns") else {
        return Ok(None);
    };
    RegistryHost::parse(&ns).map(Some).map_err(OciError::name)
}

/// Which registry and repository a request is for: `?ns=` first, then an
/// in-path host, then `defaultNs`.
fn locate(app: &AppState, ns: Option<&RegistryHost>, name: &ImagePath) -> Result<Locator, OciError> {
    let (registry, repo) = match (ns, &name.host) {
        (Some(ns), _) => (ns.clone(), name.whole_repo().map_err(OciError::name)?),
        (None, Some(host)) => (host.clone(), name.repo.clone()),
        (None, None) => match &app.default_ns {
            Some(d) => (d.clone(), name.repo.clone()),
            None => {
                return Err(OciError::new(
                    ErrorCode::NameInvalid,
                    format!(
                        "no upstream registry named for '{}': add ?ns=<registry host>, put the host first in the \
                         path (/v2/quay.io/org/app/...), or set defaultNs in the configuration",
                        name.repo
                    ),
                ));
            }
        },
    };
    let repo = registry.canonical_repo(repo);
    Ok(Locator { registry, repo })
}

fn internal(e: http::Error) -> OciError {
    OciError::new(ErrorCode::Unknown, format!("building the response: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100).unwrap(), (0, 10));
        assert_eq!(byte_range("bytes=90-", 100).unwrap(), (90, 100));
        assert_eq!(byte_range("bytes=-10", 100).unwrap(), (90, 100));
        assert!(byte_range("bytes=100-", 100).is_err());
        assert_eq!(byte_range("bytes=0-99999999999999999999999999", 100).unwrap(), (0, 100));
        assert!(byte_range("bytes=99999999999999999999999999-", 100).is_err());
        assert!(byte_range("bytes=0-1,5-6", 100).is_err());
        assert!(byte_range("items=0-1", 100).is_err());
    }

    #[test]
    fn accept_lines_are_merged_and_wildcards_count() {
        let oci = "application/vnd.oci.image.index.v1+json";
        let mut h = HeaderMap::new();
        assert!(accepts(&h, oci), "no Accept takes anything");
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"),
        );
        assert!(!accepts(&h, oci));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json;q=0.9",
            ),
        );
        assert!(accepts(&h, oci), "a later line lists it");
        let mut w = HeaderMap::new();
        w.append(header::ACCEPT, HeaderValue::from_static("application/*"));
        assert!(accepts(&w, oci));
        w.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&w, oci));
    }
}
