use std::time::Duration;

use crate::oci::RegistryHost;

/// Why an upstream request failed, and so whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The upstream says the content does not exist (404).
    NotFound,
    /// The upstream refused our credentials, or we have none it accepts.
    Denied,
    /// This host may not be contacted (unconfigured and not public, or closed world).
    Forbidden,
    /// 429: come back after the given time, if the upstream said.
    RateLimited(Option<Duration>),
    /// No connection could be made (refused, DNS failure, TLS handshake).
    Unreachable,
    /// Connected but no response, or a download stalled, within its timeout.
    TimedOut,
    /// Any other status the upstream answered with.
    BadStatus(u16),
    /// The upstream answered with something that is not what was asked for.
    Invalid,
    /// `airGapped`: no upstream is ever contacted.
    AirGapped,
}

impl ErrorKind {
    /// The metric label for this kind of failure.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Denied => "denied",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited(_) => "rate_limited",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::BadStatus(_) => "bad_status",
            ErrorKind::Invalid => "invalid",
            ErrorKind::AirGapped => "air_gapped",
        }
    }

    /// What a client is told: short and stable. Transport detail (addresses,
    /// ports, OS errors) would turn the mirror into a scanner of the network
    /// behind it; it goes to the operator's log instead.
    pub fn client_reason(&self) -> std::borrow::Cow<'static, str> {
        match self {
            ErrorKind::NotFound => "not found".into(),
            ErrorKind::Denied => "access denied".into(),
            ErrorKind::Forbidden => "not allowed".into(),
            ErrorKind::RateLimited(_) => "rate limited".into(),
            ErrorKind::Unreachable => "unreachable".into(),
            ErrorKind::TimedOut => "timed out".into(),
            ErrorKind::BadStatus(s) => format!("answered {s}").into(),
            ErrorKind::Invalid => "sent an invalid answer".into(),
            ErrorKind::AirGapped => "not contacted: the server is air-gapped".into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("upstream {registry}: {message}")]
pub struct Error {
    pub registry: RegistryHost,
    pub kind: ErrorKind,
    /// The whole story, for the operator's log.
    pub message: String,
    /// What a client may be told beyond the kind's reason (never addresses or OS errors).
    pub for_client: Option<String>,
}

impl Error {
    pub fn new(registry: &RegistryHost, kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { registry: registry.clone(), kind, message: message.into(), for_client: None }
    }

    /// Says `text` to clients instead of the kind's bare reason.
    pub fn telling_clients(mut self, text: String) -> Error {
        self.for_client = Some(text);
        self
    }

    /// The message a client sees: the registry and a short reason, no detail.
    pub fn client_message(&self) -> String {
        match &self.for_client {
            Some(text) => format!("upstream {}: {text}", self.registry),
            None => format!("upstream {}: {}", self.registry, self.kind.client_reason()),
        }
    }

    /// Worth another attempt later (by a resume or the next request).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unreachable
                | ErrorKind::TimedOut
                | ErrorKind::RateLimited(_)
                | ErrorKind::BadStatus(500..=599)
        )
    }

    /// Classifies a transport error from reqwest, keeping its cause chain in the message.
    pub(crate) fn from_transport(registry: &RegistryHost, e: &reqwest::Error) -> Error {
        let chain = cause_chain(e);
        if let Some(np) = find_source::<super::allow::NonPublicAddress>(e) {
            return Error::new(registry, ErrorKind::Forbidden, np.to_string());
        }
        // Refused, reset or dropped mid-body: the link failed, not the content.
        let kind = if e.is_timeout() { ErrorKind::TimedOut } else { ErrorKind::Unreachable };
        Error::new(registry, kind, chain)
    }
}

/// `a: b: c` from an error and its sources, without repeats.
pub(crate) fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
