//! Reachability of one upstream endpoint.
//!
//! After a connection failure or timeout the endpoint is marked down: requests
//! skip it at once (no per-request timeout wait) until a background probe,
//! backing off from `probeInterval` to `maxProbeInterval`, reaches it again.
//! Each change of state is logged once.
//!
//! Hosts a client named (not configured) are never probed in the background:
//! that would let clients start tasks. While down they are skipped until
//! their back-off has passed, then the next request is the probe.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use prometheus_client::metrics::gauge::Gauge;
use tracing::debug;

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

/// How a down endpoint comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// A background probe (configured registries).
    Probe,
    /// The first request after the back-off tries it (hosts clients named).
    NextRequest,
}

/// std `Mutex`: touched only around upstream requests (never on cache hits),
/// held for a field read or write.
#[derive(Debug)]
pub struct Health {
    name: String,
    /// `ociregistry_upstream_up` for this endpoint (configured registries only:
    /// a series per client-named host would be unbounded).
    up: Option<Gauge>,
    state: Mutex<State>,
    first_backoff: Duration,
    max_backoff: Duration,
    recovery: Recovery,
}

impl Health {
    pub fn new(
        name: String,
        up: Option<Gauge>,
        recovery: Recovery,
        first_backoff: Duration,
        max_backoff: Duration,
    ) -> Health {
        if let Some(g) = &up {
            g.set(1);
        }
        Health { name, up, state: Mutex::new(State::Up), first_backoff, max_backoff, recovery }
    }

    fn set_up(&self, v: i64) {
        if let Some(g) = &self.up {
            g.set(v);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` while the endpoint is marked down (for [`Recovery::NextRequest`],
    /// until its back-off has passed).
    pub fn check(&self) -> Result<(), Down> {
        match &*self.lock() {
            State::Up => Ok(()),
            State::Down { down, .. }
                if self.recovery == Recovery::NextRequest && Instant::now() >= down.next_probe =>
            {
                Ok(())
            }
            State::Down { down, .. } => Err(*down),
        }
    }

    pub fn record_success(&self) {
        let mut state = self.lock();
        if let State::Down { down, .. } = &*state {
            let for_ = humantime::format_duration(Duration::from_secs(
                down.since.elapsed().unwrap_or_default().as_secs(),
            ));
            self.set_up(1);
            match self.recovery {
                Recovery::Probe => {
                    info!(upstream = %self.name, down_for = %for_, "upstream is reachable again")
                }
                Recovery::NextRequest => {
                    debug!(upstream = %self.name, down_for = %for_, "upstream is reachable again")
                }
            }
            *state = State::Up;
        }
    }

    /// Marks the endpoint down; returns the wait before the first probe if it
    /// was up and is probed (the caller starts the probe), else `None`.
    pub fn record_failure(&self, reason: &str) -> Option<Duration> {
        let mut state = self.lock();
        if let State::Down { down, backoff } = &mut *state {
            // A request let through after the back-off failed again: wait longer.
            if self.recovery == Recovery::NextRequest {
                *backoff = (*backoff * 2).min(self.max_backoff);
                down.next_probe = Instant::now() + *backoff;
            }
            return None;
        }
        let backoff = self.first_backoff;
        self.set_up(0);
        let wait = humantime::format_duration(backoff);
        match self.recovery {
            Recovery::Probe => warn!(
                upstream = %self.name, reason,
                "upstream is unreachable; serving from cache only and probing it every {wait} (backing off)",
            ),
            Recovery::NextRequest => {
                debug!(upstream = %self.name, reason, "upstream is unreachable; not asking again for {wait}")
            }
        }
        *state = State::Down {
            down: Down { since: SystemTime::now(), next_probe: Instant::now() + backoff },
            backoff,
        };
        (self.recovery == Recovery::Probe).then_some(backoff)
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
        let h =
            Health::new("x".into(), None, Recovery::Probe, Duration::from_secs(1), Duration::from_secs(3));
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

    #[test]
    fn client_named_hosts_retry_on_the_next_request_after_the_backoff() {
        let h = Health::new("x".into(), None, Recovery::NextRequest, Duration::ZERO, Duration::from_secs(60));
        assert_eq!(h.record_failure("refused"), None, "never a background probe");
        assert!(h.check().is_ok(), "back-off of zero has passed: the next request tries");
        let h = Health::new(
            "y".into(),
            None,
            Recovery::NextRequest,
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        assert_eq!(h.record_failure("refused"), None);
        assert!(h.check().is_err(), "skipped during the back-off");
    }
}
