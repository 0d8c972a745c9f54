//! Client connections on the data port: how many, and for how long.
//!
//! Every connection is tracked with the moment it last received a byte or ended a request, and the
//! requests it has in flight. A watchdog closes one that has not sent a whole
//! request within `firstByteTimeout` of connecting (a port scan, a half-sent
//! HTTP/2 preface, a client trickling bytes) or that stays idle past
//! `idleTimeout` with no request in flight (HTTP/1 keep-alive, an HTTP/2
//! connection without streams). At `max` open
//! connections the one idle longest is closed to make room; with none idle the
//! new one is refused. hyper has a header-read timeout but nothing for the
//! wait before the first byte in its auto (HTTP/1 or 2) mode and no idle
//! timeout for HTTP/2, so this part is ours.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};
use tracing::warn;

use crate::metrics::{Metrics, ReasonLabels};

/// How long a connection told to close may take to finish what it was doing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub first_byte: Duration,
    pub idle: Duration,
}

/// The open connections. std `Mutex`: taken once per accepted and closed
/// connection (never per request), held for a map operation or, at the cap,
/// a scan for the connection idle longest.
pub struct Tracker {
    limits: Limits,
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Signalled when the last connection closes (for shutdown).
    drained: Notify,
    metrics: Arc<Metrics>,
    over_limit_warning: RateLimited,
}

/// One connection's activity.
pub struct Conn {
    id: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the accept.
    accepted: u64,
    /// Milliseconds since `epoch` of the last byte read or request ended.
    last_active: AtomicU64,
    in_flight: AtomicUsize,
    /// Whether a whole request has arrived yet.
    requested: AtomicBool,
    evicting: AtomicBool,
    close: Notify,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_active.store(self.now(), Ordering::Relaxed);
    }

    /// The time left before the timeout that applies now, and its name;
    /// `None` while a request is in flight.
    fn timeout(&self, limits: &Limits) -> Option<(Duration, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let (since, limit, reason) = if self.requested.load(Ordering::Acquire) {
            (self.last_active.load(Ordering::Relaxed), limits.idle, "idle_timeout")
        } else {
            (self.accepted, limits.first_byte, "first_byte_timeout")
        };
        let elapsed = Duration::from_millis(self.now().saturating_sub(since));
        Some((limit.saturating_sub(elapsed), reason))
    }
}

impl Tracker {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Tracker> {
        Arc::new(Tracker {
            metrics,
            limits,
            epoch: Instant::now(),
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            drained: Notify::new(),
            over_limit_warning: RateLimited::new(Duration::from_secs(60)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, closing the one idle longest if at the
    /// cap; `None` (refuse it) when every open connection is busy. The
    /// connection counts until its [`Admitted`] is dropped, however its task
    /// ends (a failed TLS handshake included).
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut conns = self.lock();
        if conns.len() >= self.limits.max && !self.evict_idlest(&conns) {
            drop(conns);
            self.metrics.connections_closed.get_or_create(&ReasonLabels { reason: "over_limit" }).inc();
            if let Some(suppressed) = self.over_limit_warning.check() {
                warn!(
                    max = self.limits.max,
                    refused_since_last_warning = suppressed,
                    "connection limit reached and every connection is busy; refusing new connections (connections.max)"
                );
            }
            return None;
        }
        let accepted = self.epoch.elapsed().as_millis() as u64;
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            accepted,
            last_active: AtomicU64::new(accepted),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            close: Notify::new(),
        });
        conns.insert(conn.id, conn.clone());
        self.metrics.connections_open.set(conns.len() as i64);
        Some(Admitted { tracker: self.clone(), conn })
    }

    /// Out of file descriptors: make room by closing an idle connection.
    pub fn relieve(&self) {
        self.evict_idlest(&self.lock());
    }

    /// Tells the idle connection that has been quiet longest (silent ones
    /// first) to close. Returns whether there was one.
    fn evict_idlest(&self, conns: &HashMap<u64, Arc<Conn>>) -> bool {
        let victim = conns
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.evicting.load(Ordering::Relaxed))
            .min_by_key(|c| (c.requested.load(Ordering::Relaxed), c.last_active.load(Ordering::Relaxed)));
        let Some(victim) = victim else { return false };
        victim.evicting.store(true, Ordering::Relaxed);
        victim.close.notify_one();
        self.metrics.connections_closed.get_or_create(&ReasonLabels { reason: "evicted" }).inc();
        true
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        conns.remove(&id);
        self.metrics.connections_open.set(conns.len() as i64);
        if conns.is_empty() {
            self.drained.notify_waiters();
        }
    }

    /// Waits until every connection has closed.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Serves one connection until it ends, closing it gracefully when it
    /// times out, is evicted or the server shuts down (then after `grace`,
    /// or [`CLOSE_GRACE`], it is dropped).
    pub async fn drive<C: GracefulConnection>(
        &self,
        conn: Arc<Conn>,
        connection: C,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<(), C::Error> {
        tokio::pin!(connection);
        let mut closing_until: Option<tokio::time::Instant> = None;
        loop {
            // Nothing per request wakes this loop: it checks at the deadline
            // it sees, and never later than the shorter timeout from now,
            // which is as long as any deadline a request starting or ending
            // meanwhile can set (the idle one after the first request).
            let longest = self.limits.idle.min(self.limits.first_byte);
            let check_in = match conn.timeout(&self.limits) {
                Some((left, _)) => {
                    left.clamp(Duration::from_millis(10), longest.max(Duration::from_millis(10)))
                }
                None => longest,
            };
            tokio::select! {
                r = connection.as_mut() => break r,
                () = tokio::time::sleep(check_in), if closing_until.is_none() => {
                    if let Some((left, reason)) = conn.timeout(&self.limits)
                        && left.is_zero()
                    {
                        self.metrics.connections_closed.get_or_create(&ReasonLabels { reason }).inc();
                        connection.as_mut().graceful_shutdown();
                        closing_until = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    }
                }
                () = conn.close.notified(), if closing_until.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing_until = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                Ok(()) = shutdown.changed(), if closing_until.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing_until = Some(tokio::time::Instant::now() + grace);
                }
                () = sleep_until(closing_until) => break Ok(()),
            }
        }
    }
}

/// An open connection's place in the tracker, given up when dropped.
pub struct Admitted {
    tracker: Arc<Tracker>,
    pub conn: Arc<Conn>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.tracker.remove(self.conn.id);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A request in flight on a connection: held by the response body until it
/// ends, so a long download is never mistaken for an idle connection.
pub struct InFlight(Arc<Conn>);

impl InFlight {
    pub fn begin(conn: &Arc<Conn>) -> InFlight {
        // No wake-up either way: the watchdog sees requests when it fires.
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.requested.store(true, Ordering::Release);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that records when it last received bytes.
pub struct Tracked<S> {
    pub inner: S,
    pub conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    // Writes need no mark: they happen for a request in flight, whose end
    // marks the connection active (`InFlight`'s drop).
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets a warning through at most once per `every`; returns how many were
/// held back since the last one.
pub struct RateLimited {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited { every, last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    pub fn check(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|l| l.elapsed() < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits { max, first_byte: Duration::from_secs(1), idle: Duration::from_secs(1) }
    }

    #[test]
    fn at_the_cap_the_silent_connection_makes_room_and_busy_ones_never_do() {
        let t = Tracker::new(limits(2), Arc::default());
        let busy = t.admit().unwrap();
        let _request = InFlight::begin(&busy.conn);
        let silent = t.admit().unwrap();
        let third = t.admit().expect("room made by evicting the silent connection");
        assert!(silent.conn.evicting.load(Ordering::Relaxed));
        assert!(!busy.conn.evicting.load(Ordering::Relaxed));
        let _r3 = InFlight::begin(&third.conn);
        assert!(t.admit().is_none(), "every connection busy or already closing: refused");
        drop((silent, third));
        assert_eq!(t.lock().len(), 1, "a dropped admission leaves the tracker");
    }

    #[test]
    fn timeouts_apply_only_without_a_request_in_flight() {
        let t = Tracker::new(limits(8), Arc::default());
        let admitted = t.admit().unwrap();
        let c = &admitted.conn;
        assert_eq!(c.timeout(&t.limits).map(|(_, r)| r), Some("first_byte_timeout"));
        c.touch();
        assert_eq!(
            c.timeout(&t.limits).map(|(_, r)| r),
            Some("first_byte_timeout"),
            "bytes without a whole request do not end the first-byte timeout"
        );
        let r = InFlight::begin(c);
        assert!(c.timeout(&t.limits).is_none());
        drop(r);
        assert_eq!(c.timeout(&t.limits).map(|(_, r)| r), Some("idle_timeout"));
    }

    #[test]
    fn warnings_are_rate_limited() {
        let w = RateLimited::new(Duration::from_secs(60));
        assert_eq!(w.check(), Some(0));
        assert_eq!(w.check(), None);
        assert_eq!(w.check(), None);
    }
}
