//! The agent's one blocking boundary: every hash, write, `fsync`, rename and re-verification
//! of published bytes runs on tokio's blocking pool through [`blocking`], never on an async
//! task. A multi-GiB hash on a task would stall every other model's sync, the status
//! endpoints and the SIGTERM handler sharing that worker; on the pool it stalls nothing, and
//! the process can stop without waiting for it (`main` shuts the runtime down with a short
//! timeout: what a stopped hash or write leaves is staging, which the next start removes or
//! resumes). What a full disk looks like (its own error, not a retry) lives here too.

use std::path::Path;

use crate::error::{AgentError, Result};

/// Runs blocking filesystem work on tokio's blocking pool and waits for it.
///
/// # Errors
/// [`AgentError::Io`] if the work panicked (or the runtime is shutting down).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Io {
            path: std::path::PathBuf::new(),
            source: std::io::Error::other(format!("a file task failed: {e}")),
        })
}

/// A full disk is its own error (not a retry), everything else is I/O.
pub(crate) fn write_error(e: std::io::Error, dest: &Path, model: &str) -> AgentError {
    if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        let dir = dest.parent().unwrap_or(dest).to_owned();
        let available = free_bytes(&dir).unwrap_or(0);
        AgentError::DiskFull {
            model: model.to_owned(),
            dir,
            needed: 0,
            available,
        }
    } else {
        AgentError::Io {
            path: dest.to_owned(),
            source: e,
        }
    }
}

/// Free bytes on the filesystem holding `dir` (for unprivileged writers).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
}
