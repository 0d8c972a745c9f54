//! Limits: client connections, background verification, upstream resilience.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{ConnectionsFile, ResilienceFile, VerifyFile, set_duration};

/// Limits on client connections to the data port.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// Open connections at most; `None`: three quarters of the file descriptor limit.
    pub max: Option<usize>,
    /// How long a new connection may stay silent (no request bytes) before it is closed.
    pub first_byte_timeout: Duration,
    /// How long a connection with no request in flight is kept open.
    pub idle_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max: None,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Verify {
    pub interval: Duration,
    pub rate: Option<u64>,
}

const DEFAULT_VERIFY: Verify = Verify { interval: Duration::from_secs(24 * 3600), rate: Some(32 << 20) };

pub(super) fn resolve_connections(f: Option<&ConnectionsFile>) -> Result<Connections> {
    let mut c = Connections::default();
    let Some(f) = f else { return Ok(c) };
    if f.max == Some(0) {
        bail!("connections.max: must be at least 1");
    }
    c.max = f.max;
    set_duration("connections.firstByteTimeout", &f.first_byte_timeout, &mut c.first_byte_timeout)?;
    set_duration("connections.idleTimeout", &f.idle_timeout, &mut c.idle_timeout)?;
    if c.first_byte_timeout.is_zero() || c.idle_timeout.is_zero() {
        bail!("connections: firstByteTimeout and idleTimeout must be more than 0");
    }
    Ok(c)
}

pub(super) fn resolve_verify(f: Option<&VerifyFile>) -> Result<Option<Verify>> {
    let Some(f) = f else { return Ok(Some(DEFAULT_VERIFY)) };
    let mut v = DEFAULT_VERIFY;
    match f.interval.as_deref() {
        Some("off") => return Ok(None),
        other => set_duration("verify.interval", &other.map(str::to_owned), &mut v.interval)?,
    }
    if v.interval.is_zero() {
        bail!("verify.interval: must be more than 0 (or off)");
    }
    if let Some(r) = &f.rate {
        v.rate =
            Some(parse_bytes(r).with_context(|| format!("verify.rate: '{r}' is not a size like 32MiB"))?);
    }
    Ok(Some(v))
}

/// `1048576`, `512KiB`, `32MiB`, `1GiB` (also kB/MB/GB, powers of ten).
pub(super) fn parse_bytes(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().context("no number")?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => bail!("unknown unit '{other}'"),
    };
    let v = n.checked_mul(mult).context("too large")?;
    if v == 0 {
        bail!("must be more than 0");
    }
    Ok(v)
}

/// `2MiB/s` (or `2MiB`): bytes per second.
pub(super) fn parse_rate(key: &str, s: &str) -> Result<u64> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s);
    parse_bytes(n).with_context(|| format!("{key}: '{s}' is not a rate like 2MiB/s"))
}

/// Limits and back-offs for upstreams on bad links.
#[derive(Debug, Clone, Copy)]
pub struct Resilience {
    /// Upstream requests in flight per registry (blob downloads included).
    pub max_concurrent_requests: usize,
    /// Downloads allowed to continue after every client that asked has gone.
    pub max_background_fills: usize,
    /// How often a broken blob download is resumed before it is given up.
    pub resume_attempts: u32,
    /// First wait before probing an upstream that went down; doubles up to the max.
    pub probe_interval: Duration,
    pub max_probe_interval: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            max_concurrent_requests: 32,
            max_background_fills: 16,
            resume_attempts: 5,
            probe_interval: Duration::from_secs(2),
            max_probe_interval: Duration::from_secs(60),
        }
    }
}

pub(super) fn resolve_resilience(file: Option<&ResilienceFile>) -> Result<Resilience> {
    let mut r = Resilience::default();
    let Some(f) = file else { return Ok(r) };
    let positive = |key: &str, v: Option<usize>, slot: &mut usize| -> Result<()> {
        match v {
            Some(0) => bail!("resilience.{key}: must be at least 1"),
            Some(n) => *slot = n,
            None => {}
        }
        Ok(())
    };
    positive("maxConcurrentRequests", f.max_concurrent_requests, &mut r.max_concurrent_requests)?;
    positive("maxBackgroundFills", f.max_background_fills, &mut r.max_background_fills)?;
    r.resume_attempts = f.resume_attempts.unwrap_or(r.resume_attempts);
    set_duration("resilience.probeInterval", &f.probe_interval, &mut r.probe_interval)?;
    set_duration("resilience.maxProbeInterval", &f.max_probe_interval, &mut r.max_probe_interval)?;
    r.max_probe_interval = r.max_probe_interval.max(r.probe_interval);
    Ok(r)
}
