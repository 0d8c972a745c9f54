//! Rate limits: a 429 (or a 503 with `Retry-After`) pauses every request to
//! the upstream for as long as it asked, never less.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

/// std `Mutex`: touched only around upstream requests, held for a field.
pub(super) struct Pause {
    until: Mutex<Option<Instant>>,
    /// Wait after a 429 that names no `Retry-After`.
    default: Duration,
}

impl Pause {
    pub fn new(default: Duration) -> Pause {
        Pause { until: Mutex::new(None), default }
    }

    /// `Err((time left, message))` while paused.
    pub fn check(&self) -> Result<(), (Duration, String)> {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        match until.map(|u| u.saturating_duration_since(Instant::now())) {
            Some(left) if !left.is_zero() => Err((
                left,
                format!("rate limited; not asking again for {}", humantime::format_duration(round_up(left))),
            )),
            _ => Ok(()),
        }
    }

    /// Pauses if the answer asks for it; returns the pause (rounded up, for logs).
    pub fn note(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        let pause = match (status, retry_after(headers)) {
            (StatusCode::TOO_MANY_REQUESTS, after) => after.unwrap_or(self.default),
            (StatusCode::SERVICE_UNAVAILABLE, Some(after)) => after,
            _ => return None,
        };
        let until = Instant::now() + pause;
        let mut paused = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *paused = Some(paused.map_or(until, |p| p.max(until)));
        Some(round_up(pause))
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub(super) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn round_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_pauses_for_as_long_as_asked() {
        let p = Pause::new(Duration::from_secs(2));
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(p.note(StatusCode::OK, &h), None);
        assert!(p.check().is_ok());
        assert_eq!(p.note(StatusCode::TOO_MANY_REQUESTS, &h), Some(Duration::from_secs(30)));
        let (left, _) = p.check().unwrap_err();
        assert!(left > Duration::from_secs(29));
        assert_eq!(
            p.note(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
            None,
            "a 503 without Retry-After is no pause"
        );
    }
}
