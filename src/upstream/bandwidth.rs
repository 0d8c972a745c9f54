//! Sharing a thin WAN link: a token bucket per registry and one for the
//! whole mirror (`upstreamBandwidth`), with two classes of traffic.
//!
//! Downloads a client is waiting for go first: background work (preloads,
//! downloads whose clients left) waits while any interactive download is
//! waiting for bytes, and takes the link in small steps, so it yields within
//! a fraction of a second when a client starts waiting. Blobs are fetched
//! in `Range` windows (`Registry::window`), each paid for before it is asked
//! for: the link carries only what was asked for, however far the kernel's
//! TCP buffers would let an upstream run ahead of a slow reader.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Whose bytes these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A client is waiting for them.
    Interactive,
    /// Preloading, or a download every client has left.
    Background,
}

/// The longest a burst may run ahead of the rate.
const BURST: Duration = Duration::from_millis(200);
/// How long background work sleeps while a client's download waits.
const YIELD: Duration = Duration::from_millis(20);

/// A token bucket in bytes per second.
#[derive(Debug)]
pub struct Bandwidth {
    rate: u64,
    state: Mutex<Bucket>,
    interactive_waiting: AtomicUsize,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: a chunk bigger than the burst is a debt paid by waiting.
    tokens: f64,
    at: Instant,
}

impl Bandwidth {
    pub fn new(bytes_per_second: u64) -> Bandwidth {
        Bandwidth {
            rate: bytes_per_second.max(1),
            state: Mutex::new(Bucket { tokens: 0.0, at: Instant::now() }),
            interactive_waiting: AtomicUsize::new(0),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: usize, class: Class) {
        let _waiting = (class == Class::Interactive).then(|| Waiting::new(&self.interactive_waiting));
        loop {
            if class == Class::Background && self.interactive_waiting.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(YIELD).await;
                continue;
            }
            let wait = {
                let Ok(mut b) = self.state.lock() else { return };
                let now = Instant::now();
                let burst = self.rate as f64 * BURST.as_secs_f64();
                b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate as f64).min(burst);
                b.at = now;
                if b.tokens >= 0.0 {
                    b.tokens -= bytes as f64;
                    if b.tokens >= 0.0 {
                        return;
                    }
                    // Ours now: pay the debt by waiting, then go.
                    Some(Duration::from_secs_f64(-b.tokens / self.rate as f64))
                } else {
                    None
                }
            };
            match wait {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    return;
                }
                // Someone else's debt is being paid: look again shortly (the
                // next to find the bucket positive goes, which is fair enough
                // between downloads taking chunks of the same size).
                None => tokio::time::sleep(YIELD).await,
            }
        }
    }
}

/// Counts a waiting interactive download for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `22:00-06:00`: when background loads may run (the server's local time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: u32,
    to: u32,
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(|| format!("'{s}' is not a window like 22:00-06:00"))?;
        match (minutes(a), minutes(b)) {
            (Some(from), Some(to)) if from != to => Ok(Window { from, to }),
            _ => Err(format!("'{s}' is not a window like 22:00-06:00")),
        }
    }

    /// Whether `minute` (of the day) is inside; windows may wrap past midnight.
    pub fn contains(&self, minute: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }

    /// Waits until the window is open.
    pub async fn wait_open(&self) {
        while !self.contains(local_minute()) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
}

/// Minutes since local midnight.
// The libc crate marks `time_t` deprecated on musl (its width changed in musl
// 1.2); it is still the type localtime_r takes.
#[allow(deprecated)]
fn local_minute() -> u32 {
    let now: libc::time_t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: localtime_r reads `now` and writes only the `tm` we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return 0;
    }
    (tm.tm_hour * 60 + tm.tm_min) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate() {
        let b = Bandwidth::new(1_000_000);
        let start = tokio::time::Instant::now();
        for _ in 0..20 {
            b.take(100_000, Class::Interactive).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((1.8..2.3).contains(&took), "2 MB at 1 MB/s took {took:.2}s");
    }

    #[tokio::test(start_paused = true)]
    async fn background_waits_for_interactive() {
        let b = std::sync::Arc::new(Bandwidth::new(1_000_000));
        let bg = {
            let b = b.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    b.take(100_000, Class::Background).await;
                }
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..10 {
            b.take(100_000, Class::Interactive).await;
        }
        let interactive_done = tokio::time::Instant::now();
        let bg_done = bg.await.unwrap();
        assert!(interactive_done < bg_done, "the client's download finished first");
    }

    #[test]
    fn windows_wrap_past_midnight() {
        let w = Window::parse("22:00-06:00").unwrap();
        assert!(w.contains(23 * 60) && w.contains(60) && !w.contains(12 * 60) && !w.contains(6 * 60));
        let d = Window::parse("09:30-17:00").unwrap();
        assert!(d.contains(10 * 60) && !d.contains(9 * 60));
        for bad in ["", "22-06", "25:00-01:00", "10:00-10:00", "10:00"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
