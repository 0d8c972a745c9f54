//! Reading a small file on an async worker thread, only when that cannot
//! wait on the disk: the path is resolved from the dentry cache alone
//! (`openat2` with `RESOLVE_CACHED`, Linux 5.12) and the bytes come from the
//! page cache alone (`preadv2` with `RWF_NOWAIT`). Anything else (not cached,
//! an older kernel, a seccomp profile that refuses the calls) is `None`, and
//! the caller takes the blocking pool as before.
//!
//! Why: a warm small-blob hit spent more time handing the open and the read
//! to the blocking pool and back (two thread wake-ups) than reading.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

/// Cleared the first time the kernel says it lacks a call or a flag, so a
/// kernel without them costs one failed attempt, not one per request.
static SUPPORTED: AtomicBool = AtomicBool::new(true);

fn unsupported(errno: i32) -> bool {
    matches!(errno, libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
}

/// Opens `path` read-only if every component is in the dentry cache.
pub fn open_cached(path: &Path) -> Option<File> {
    if !SUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `open_how` is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: a NUL-terminated path and an `open_how` of the size passed,
    // both alive for the call; the result is a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        if unsupported(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
            SUPPORTED.store(false, Ordering::Relaxed);
        }
        return None;
    }
    // SAFETY: a descriptor just opened and owned by nobody else.
    Some(unsafe { File::from_raw_fd(fd as i32) })
}

/// The whole of `file` (`len` bytes) if it is all in the page cache.
pub fn read_cached(file: &File, len: usize) -> Option<Bytes> {
    if !SUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let mut buf = Vec::<u8>::with_capacity(len);
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: one iovec over the vector's `len` bytes of capacity, which the
    // kernel writes and nothing reads before the call returns.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    if n < 0 {
        if unsupported(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
            SUPPORTED.store(false, Ordering::Relaxed);
        }
        return None;
    }
    // A short read: part of the file is not cached (or it is shorter than
    // said); the blocking path reads it, or reports it short.
    if n as usize != len {
        return None;
    }
    // SAFETY: the kernel wrote exactly `len` bytes at the start of `buf`.
    unsafe { buf.set_len(len) };
    Some(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_is_read_whole_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"some bytes").unwrap();
        // Written just now: its dentry and pages are cached.
        let file = open_cached(&path).expect("openat2 with RESOLVE_CACHED (Linux 5.12+)");
        assert_eq!(read_cached(&file, 10).as_deref(), Some(&b"some bytes"[..]));
        assert!(read_cached(&file, 11).is_none(), "a file shorter than said is not read here");
        assert!(open_cached(&dir.path().join("absent")).is_none());
    }
}
