//! OCI error responses: one table from code to status, one envelope writer.
//! See the distribution spec's "Error Codes" section.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::cache;
use crate::oci::{ParseError, Part, PathError};
use crate::upstream::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    Unsupported,
    /// A pull-only server's 404 for routes it does not offer.
    NotOffered,
    Denied,
    Unauthorized,
    TooManyRequests,
    Unavailable,
    RangeInvalid,
    /// The cache is full of what cannot be evicted (507, Insufficient Storage).
    CacheFull,
    Unknown,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown
            | ErrorCode::NotOffered => StatusCode::NOT_FOUND,
            ErrorCode::DigestInvalid | ErrorCode::ManifestInvalid | ErrorCode::NameInvalid => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::CacheFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::Unsupported | ErrorCode::NotOffered => "UNSUPPORTED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::CacheFull | ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

/// Whether a failed request was about a manifest or a blob, to pick the
/// right "unknown" code for an upstream 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Manifest,
    Blob,
    Repository,
}

#[derive(Debug)]
pub struct OciError {
    pub code: ErrorCode,
    /// What the client is told.
    pub message: String,
    /// What the operator's log is told, when it is more than `message`.
    pub detail: Option<String>,
    /// Extra response headers (e.g. `Content-Range` on a 416).
    pub headers: Vec<(http::HeaderName, String)>,
}

/// The full cause of an error response, for the access log only.
#[derive(Debug, Clone)]
pub(crate) struct ErrorDetail(pub String);

impl OciError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError { code, message: message.into(), detail: None, headers: Vec::new() }
    }

    fn with_detail(mut self, detail: String) -> OciError {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: String) -> OciError {
        self.headers.push((name, value));
        self
    }

    pub fn from_path(e: PathError) -> OciError {
        match e {
            PathError::Name(e) => OciError::new(ErrorCode::NameInvalid, e.to_string()),
            PathError::Digest(e) => OciError::new(ErrorCode::DigestInvalid, e.to_string()),
            // A malformed tag names no manifest: 404, as the OCI conformance suite expects.
            PathError::Reference(e) if e.what == Part::Tag => {
                OciError::new(ErrorCode::ManifestUnknown, e.to_string())
            }
            PathError::Reference(e) => OciError::new(ErrorCode::DigestInvalid, e.to_string()),
        }
    }

    pub fn name(e: ParseError) -> OciError {
        OciError::new(ErrorCode::NameInvalid, e.to_string())
    }

    /// Maps a cache error to its code. Clients get a short, stable message;
    /// upstream transport detail and file paths go to the log only.
    pub fn from_cache(e: &cache::Error, subject: Subject) -> OciError {
        use cache::Error as E;
        let message = match e {
            E::Upstream(u) => u.client_message(),
            E::Io { source, .. } if cache::store::is_unavailable(source) => {
                "the cache's storage did not answer; try again".to_owned()
            }
            E::Io { .. } | E::Blocking { .. } | E::Panicked { .. } | E::ShortBlobFile { .. } => {
                "internal error; see the server log".to_owned()
            }
            other => other.to_string(),
        };
        let code = match e {
            E::Upstream(u) => match &u.kind {
                ErrorKind::NotFound | ErrorKind::AirGapped => match subject {
                    Subject::Manifest => ErrorCode::ManifestUnknown,
                    Subject::Blob => ErrorCode::BlobUnknown,
                    Subject::Repository => ErrorCode::NameUnknown,
                },
                ErrorKind::Denied | ErrorKind::Forbidden => ErrorCode::Denied,
                ErrorKind::RateLimited(after) => {
                    let err = OciError::new(ErrorCode::TooManyRequests, message).with_detail(e.to_string());
                    return match after {
                        Some(d) => err.with_header(http::header::RETRY_AFTER, d.as_secs().to_string()),
                        None => err,
                    };
                }
                ErrorKind::Invalid if subject == Subject::Manifest => ErrorCode::ManifestInvalid,
                _ => ErrorCode::Unavailable,
            },
            E::InvalidManifest { .. } => ErrorCode::ManifestInvalid,
            E::DigestMismatch { .. } => match subject {
                Subject::Manifest => ErrorCode::ManifestInvalid,
                Subject::Blob | Subject::Repository => ErrorCode::DigestInvalid,
            },
            // Worth a retry: the upstream misbehaved or a download was cut short.
            E::TooLong { .. }
            | E::Truncated { .. }
            | E::FillDropped { .. }
            | E::FillLost
            | E::TooManyBackgroundFills(_) => ErrorCode::Unavailable,
            // Ours: a bug or the disk; the log has the detail.
            E::Blocking { .. } | E::Panicked { .. } | E::ShortBlobFile { .. } => ErrorCode::Unknown,
            E::Io { source, .. } if cache::store::is_unavailable(source) => ErrorCode::Unavailable,
            E::Io { .. } => ErrorCode::Unknown,
            // The blob is intact but not what the manifest describes: as if absent,
            // so a client falls back to its next host.
            E::SizeMismatch { .. } => ErrorCode::BlobUnknown,
            // Only preloading chooses platforms; a client never meets it.
            E::NoPlatform { .. } => ErrorCode::ManifestUnknown,
            E::CacheFull { .. } => ErrorCode::CacheFull,
            E::BadPattern { .. } => ErrorCode::NameInvalid,
        };
        OciError::new(code, message).with_detail(e.to_string())
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = json!({ "errors": [{ "code": self.code.as_str(), "message": self.message }] });
        let mut resp = (self.code.status(), Json(body)).into_response();
        resp.extensions_mut().insert(self.code);
        if let Some(d) = self.detail {
            resp.extensions_mut().insert(ErrorDetail(d));
        }
        for (name, value) in self.headers {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}
