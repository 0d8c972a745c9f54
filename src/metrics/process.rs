//! The process metrics Prometheus client libraries export, read from /proc.

/// RSS, open fds, CPU and start time from /proc (Linux), named as the
/// Prometheus client libraries name them.
pub(super) fn metrics() -> String {
    let mut out = String::new();
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100);
    if let Some(rss_pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
    {
        metric(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory in bytes",
            rss_pages * page,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(&mut out, "process_open_fds", "gauge", "Open file descriptors", fds.count() as u64);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime/stime are 14/15, starttime 22.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (field(14), field(15)) {
            let secs = (u + s) as f64 / ticks as f64;
            out.push_str(&format!(
                "# HELP process_cpu_seconds Total user and system CPU time in seconds.\n# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total {secs}\n"
            ));
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok()))
        });
        if let (Some(start), Some(boot)) = (field(22), boot) {
            metric(
                &mut out,
                "process_start_time_seconds",
                "gauge",
                "Start time since the epoch",
                boot + start / ticks,
            );
        }
    }
    out
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    out.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}\n"));
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf takes an integer and returns one; no pointers, no preconditions.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}
