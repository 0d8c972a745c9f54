//! Reachability of one upstream endpoint.
//!
//! After a connection failure or timeout the endpoint is marked down: requests
//! skip it at once (no per-request timeout wait) until a background probe,
//! backing off from `probeInterval` to `maxProbeInterval`, reaches it again.
//! Each change of state is logged once.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::metrics::{EndpointUpLabels, METRICS};

#[derive(Debug, Clone, Copy)]
pub struct Down {
    pub since: SystemTime,
    pub next_probe: Instant,
}

impl Down {
    pub fn describe(&self) -> String {
        let ago = self.since.elapsed().unwrap_or_default();
        let next = self.next_probe.saturating_duration_since(Instant::now());
        format!(
            "unreachable since {} ({} ago); next probe in {}",
            httpdate::fmt_http_date(self.since),
            humantime::format_duration(Duration::from_secs(ago.as_secs())),
            humantime::format_duration(Duration::from_secs(next.as_secs().max(1)))
        )
    }
}

#[derive(Debug)]
enum State {
    Up,
    Down { down: Down, backoff: Duration },
}

/// std `Mutex`: touched only around upstream requests (never on cache hits),
/// held for a field read or write.
#[derive(Debug)]
pub struct Health {
    name: String,
    /// `ociregistry_upstream_up` for this endpoint.
    up: prometheus_client::metrics::gauge::Gauge,
    state: Mutex<State>,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl Health {
    pub fn new(
        name: String,
        labels: EndpointUpLabels,
        first_backoff: Duration,
        max_backoff: Duration,
    ) -> Health {
        let up = METRICS.upstream_up.get_or_create(&labels).clone();
        up.set(1);
        Health { name, up, state: Mutex::new(State::Up), first_backoff, max_backoff }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` while the endpoint is marked down.
    pub fn check(&self) -> Result<(), Down> {
        match &*self.lock() {
            State::Up => Ok(()),
            State::Down { down, .. } => Err(*down),
        }
    }

    pub fn record_success(&self) {
        let mut state = self.lock();
        if let State::Down { down, .. } = &*state {
            let for_ = down.since.elapsed().unwrap_or_default();
            self.up.set(1);
            info!(upstream = %self.name, down_for = %humantime::format_duration(Duration::from_secs(for_.as_secs())), "upstream is reachable again");
            *state = State::Up;
        }
    }

    /// Marks the endpoint down; returns the wait before the first probe if it
    /// was up (the caller starts the probe), `None` if it was already down.
    pub fn record_failure(&self, reason: &str) -> Option<Duration> {
        let mut state = self.lock();
        if let State::Down { .. } = &*state {
            return None;
        }
        let backoff = self.first_backoff;
        self.up.set(0);
        warn!(
            upstream = %self.name, reason,
            "upstream is unreachable; serving from cache only and probing it every {} (backing off)",
            humantime::format_duration(backoff)
        );
        *state = State::Down {
            down: Down { since: SystemTime::now(), next_probe: Instant::now() + backoff },
            backoff,
        };
        Some(backoff)
    }

    /// A probe failed: wait longer before the next one. Returns that wait.
    pub fn probe_failed(&self) -> Duration {
        let mut state = self.lock();
        match &mut *state {
            State::Down { down, backoff } => {
                *backoff = (*backoff * 2).min(self.max_backoff);
                down.next_probe = Instant::now() + *backoff;
                *backoff
            }
            State::Up => self.first_backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_then_up_with_growing_capped_backoff() {
        let labels = EndpointUpLabels { registry: "x".into(), endpoint: "http://x/".into() };
        let h = Health::new("x".into(), labels, Duration::from_secs(1), Duration::from_secs(3));
        assert!(h.check().is_ok());
        assert_eq!(h.record_failure("refused"), Some(Duration::from_secs(1)));
        assert_eq!(h.record_failure("refused"), None, "already down: no second probe");
        assert!(h.check().is_err());
        assert_eq!(h.probe_failed(), Duration::from_secs(2));
        assert_eq!(h.probe_failed(), Duration::from_secs(3));
        assert_eq!(h.probe_failed(), Duration::from_secs(3));
        h.record_success();
        assert!(h.check().is_ok());
    }
}
