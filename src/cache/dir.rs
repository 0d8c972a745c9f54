//! The cache directory itself: created and checked at start-up, and swept
//! of what crashes left behind.

use std::time::Duration;

use tracing::debug;

use super::layout::Layout;

/// Temp files older than this are left-overs of a crash, not a live fill of
/// another instance sharing the directory.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Interrupted downloads are kept this long for a later fill to resume.
const STALE_PARTIAL_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn prepare_dirs(layout: &Layout) -> anyhow::Result<()> {
    use anyhow::Context;
    let root = layout.root();
    for dir in [layout.blobs(), layout.manifests(), layout.tags(), layout.tmp()] {
        std::fs::create_dir_all(&dir).with_context(|| {
            format!("creating cache directory {} (imagePath / --image-path)", dir.display())
        })?;
    }
    let probe = layout.temp_file("probe");
    std::fs::write(&probe, b"").with_context(|| {
        format!("cache directory {} is not writable (imagePath / --image-path)", root.display())
    })?;
    let _ = std::fs::remove_file(&probe);
    remove_stale_temps(layout);
    Ok(())
}

fn remove_stale_temps(layout: &Layout) {
    let Ok(entries) = std::fs::read_dir(layout.tmp()) else {
        return;
    };
    for e in entries.flatten() {
        let partial = e.file_name().to_string_lossy().ends_with(".partial");
        let max_age = if partial { STALE_PARTIAL_AGE } else { STALE_TEMP_AGE };
        let stale = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if stale {
            debug!(file = %e.path().display(), "removing stale partial download");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
