//! Large objects: parallel ranged GETs pinned to one object version (`if_match` on the ETag),
//! written in place into a preallocated `.partial` file, with a journal of finished parts that
//! survives a container restart (the `emptyDir` does), so a restarted agent continues where it
//! stopped. Memory is bounded by `parallelism` streams, not by the object's size.
//!
//! The digest is computed in order as the finished prefix grows (each part is hashed right
//! after it and every part before it are on disk, read back from the page cache), so
//! verification needs no separate pass over the file once the last part lands.
//!
//! Every write, `fsync` and hash runs on tokio's blocking pool, never on the task: a model's
//! hash must not stall the other models' syncs, the status endpoints or SIGTERM.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use kiln::Digest;
use object_store::path::Path as StorePath;
use object_store::{GetRange, ObjectMeta, ObjectStore};
use sha2::{Digest as _, Sha256};

use crate::disk::blocking;
use crate::error::{AgentError, Result};
use crate::fetch::{classify, pinned};
use crate::metrics::AgentMetrics;

/// How big objects are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    /// Bytes per part.
    pub part_size: u64,
    /// Parts in flight.
    pub parallelism: usize,
}

/// The journal: the object identity and part size it belongs to, then one finished part
/// index per line.
fn journal_path(partial: &Path) -> PathBuf {
    let mut p = partial.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// A journal's first line: what its parts mean. This object (size, ETag, version id,
/// location) cut into parts of `part_size` bytes: a restart with another `part_size_kib`, or
/// another object under the same name, must not map old parts onto other ranges.
pub fn journal_identity(meta: &ObjectMeta, part_size: u64) -> String {
    format!(
        "size={} etag={} version={} part_size={part_size} location={}",
        meta.size,
        meta.e_tag.as_deref().unwrap_or("-"),
        meta.version.as_deref().unwrap_or("-"),
        meta.location,
    )
}

/// Parts already finished for this exact object and part size, per the journal (empty if
/// none or stale; an index past the object's last part is ignored).
fn load_journal(journal: &Path, identity: &str, parts: u64) -> BTreeSet<u64> {
    let Ok(text) = std::fs::read_to_string(journal) else {
        return BTreeSet::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(identity) {
        return BTreeSet::new();
    }
    lines
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p| p < parts)
        .collect()
}

/// Downloads `location` into `partial` in parts, resuming from its journal; returns the digest
/// and size. The journal is removed on success; on failure both files stay for the next try
/// (a digest mismatch removes them: those bytes are not worth resuming).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn download_parts(
    store: &dyn ObjectStore,
    location: &StorePath,
    meta: &ObjectMeta,
    partial: &Path,
    plan: PartPlan,
    model: &str,
    url: &str,
    metrics: &AgentMetrics,
) -> Result<(Digest, u64)> {
    let io = |p: &Path| AgentError::io(p.to_owned());
    let journal = journal_path(partial);
    let part_size = plan.part_size.max(1);
    let parts = meta.size.div_ceil(part_size);
    let id = journal_identity(meta, part_size);
    let (file, mut progress) = {
        let (journal, partial, size) = (journal.clone(), partial.to_owned(), meta.size);
        blocking(move || Progress::open(&journal, &partial, &id, parts, part_size, size)).await??
    };
    if !progress.done.is_empty() {
        tracing::info!(
            model,
            parts_done = progress.done.len(),
            "resuming a download from its journal"
        );
    }
    let todo: Vec<u64> = (0..parts).filter(|p| !progress.done.contains(p)).collect();
    let mut downloaded: u64 = progress
        .done
        .iter()
        .map(|&p| part_len(p, part_size, meta.size))
        .sum();

    let mut fetches = futures::stream::iter(todo.into_iter().map(|p| {
        let file = Arc::clone(&file);
        async move {
            let start = p * part_size;
            let end = (start + part_size).min(meta.size);
            let got = store
                .get_opts(location, pinned(meta, Some(GetRange::Bounded(start..end))))
                .await
                .map_err(|e| classify(e, model, url))?;
            let mut stream = got.into_stream();
            let mut offset = start;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| classify(e, model, url))?;
                if offset + chunk.len() as u64 > end {
                    return Err(AgentError::Store {
                        model: model.to_owned(),
                        url: crate::redact::url(url),
                        detail: "server sent more bytes than the range asked for".into(),
                        transient: true,
                    });
                }
                let len = chunk.len() as u64;
                let file = Arc::clone(&file);
                blocking(move || file.write_all_at(&chunk, offset))
                    .await?
                    .map_err(io(partial))?;
                offset += len;
            }
            if offset != end {
                return Err(AgentError::Store {
                    model: model.to_owned(),
                    url: crate::redact::url(url),
                    detail: format!("part {p} ended at byte {offset}, expected {end}"),
                    transient: true,
                });
            }
            Ok::<u64, AgentError>(p)
        }
    }))
    .buffer_unordered(plan.parallelism.max(1));

    while let Some(result) = fetches.next().await {
        let p = result?;
        let file = Arc::clone(&file);
        let path = partial.to_owned();
        progress =
            blocking(move || progress.finished(&file, &path, p).map(|()| progress)).await??;
        let len = part_len(p, part_size, meta.size);
        downloaded += len;
        metrics.downloaded(model, len, downloaded, meta.size);
    }
    drop(fetches);
    let path = partial.to_owned();
    let digest = blocking(move || {
        file.sync_all().map_err(AgentError::io(&path))?;
        let _ = std::fs::remove_file(&progress.journal_path);
        Ok::<_, AgentError>(Digest::from_bytes(
            progress.frontier.hasher.finalize().into(),
        ))
    })
    .await??;
    Ok((digest, meta.size))
}

/// A ranged download's state on disk: the finished parts, the journal they are appended to,
/// and the hash of the finished prefix.
struct Progress {
    done: BTreeSet<u64>,
    journal: std::fs::File,
    journal_path: PathBuf,
    frontier: Frontier,
}

impl Progress {
    /// Opens (or, when its journal is missing or another object's, starts) a download into
    /// `partial`: the preallocated file and the journal, and the prefix already hashed.
    fn open(
        journal_path: &Path,
        partial: &Path,
        identity: &str,
        parts: u64,
        part_size: u64,
        size: u64,
    ) -> Result<(Arc<std::fs::File>, Self)> {
        let io = |p: &Path| AgentError::io(p.to_owned());
        let done = load_journal(journal_path, identity, parts);
        if done.is_empty() {
            // Fresh start: a new identity line, a preallocated file.
            std::fs::write(journal_path, format!("{identity}\n")).map_err(io(journal_path))?;
            let f = std::fs::File::create(partial).map_err(io(partial))?;
            f.set_len(size).map_err(io(partial))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(partial)
            .map_err(io(partial))?;
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .open(journal_path)
            .map_err(io(journal_path))?;
        let mut frontier = Frontier {
            next: 0,
            parts,
            part_size,
            size,
            hasher: Sha256::new(),
        };
        frontier.advance(&file, partial, &done)?;
        let progress = Self {
            done,
            journal,
            journal_path: journal_path.to_owned(),
            frontier,
        };
        Ok((Arc::new(file), progress))
    }

    /// Part `p` is on disk: made durable, journaled, and hashed if the prefix reaches it.
    fn finished(&mut self, file: &std::fs::File, partial: &Path, p: u64) -> Result<()> {
        file.sync_data().map_err(AgentError::io(partial))?;
        writeln!(self.journal, "{p}")
            .and_then(|()| self.journal.sync_data())
            .map_err(AgentError::io(&self.journal_path))?;
        self.done.insert(p);
        self.frontier.advance(file, partial, &self.done)
    }
}

/// Bytes of part `p` (0 for an index past the end, never an underflow).
fn part_len(p: u64, part_size: u64, size: u64) -> u64 {
    size.saturating_sub(p.saturating_mul(part_size))
        .min(part_size)
}

/// The in-order hash of the finished prefix of a ranged download.
struct Frontier {
    /// First part not hashed yet.
    next: u64,
    parts: u64,
    part_size: u64,
    size: u64,
    hasher: Sha256,
}

impl Frontier {
    /// Hashes every finished part right after the frontier, in order (read back from the page
    /// cache: they were just written).
    fn advance(&mut self, file: &std::fs::File, path: &Path, done: &BTreeSet<u64>) -> Result<()> {
        let err = |e| AgentError::Io {
            path: path.to_owned(),
            source: e,
        };
        let mut reader = file.try_clone().map_err(err)?;
        let mut buf = vec![0u8; 1 << 20];
        while self.next < self.parts && done.contains(&self.next) {
            let mut left = part_len(self.next, self.part_size, self.size);
            reader
                .seek(SeekFrom::Start(self.next * self.part_size))
                .map_err(err)?;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                reader.read_exact(&mut buf[..n]).map_err(err)?;
                self.hasher.update(&buf[..n]);
                left -= n as u64;
            }
            self.next += 1;
        }
        Ok(())
    }
}

/// Removes a partial download and its journal (after a digest mismatch).
pub(crate) fn discard(partial: &Path) {
    let _ = std::fs::remove_file(partial);
    let _ = std::fs::remove_file(journal_path(partial));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            location: StorePath::from("m/model.onnx"),
            last_modified: Default::default(),
            size,
            e_tag: Some("\"e1\"".into()),
            version: None,
        }
    }

    #[test]
    fn a_journal_belongs_to_one_object_and_one_part_size() {
        let dir = tempfile::tempdir().expect("dir");
        let journal = dir.path().join("j");
        let m = meta(10 << 20);
        let id = journal_identity(&m, 1 << 20);
        std::fs::write(&journal, format!("{id}\n0\n3\n99\n")).expect("journal");
        assert_eq!(
            load_journal(&journal, &id, 10),
            BTreeSet::from([0, 3]),
            "indices past the last part are ignored"
        );
        // A restart with another part size: parts 0 and 3 mean other ranges now.
        assert!(load_journal(&journal, &journal_identity(&m, 4 << 20), 3).is_empty());
        // Another object under the same name, or another location.
        let mut changed = m.clone();
        changed.e_tag = Some("\"e2\"".into());
        assert!(load_journal(&journal, &journal_identity(&changed, 1 << 20), 10).is_empty());
        let mut moved = m.clone();
        moved.location = StorePath::from("n/model.onnx");
        assert!(load_journal(&journal, &journal_identity(&moved, 1 << 20), 10).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parts_cover_the_object_exactly(size in 0u64..1 << 40, part in 1u64..1 << 30, extra in 0u64..4) {
            let parts = size.div_ceil(part);
            let total: u64 = (0..parts).map(|p| part_len(p, part, size)).sum();
            proptest::prop_assert_eq!(total, size);
            if parts > 0 {
                proptest::prop_assert!(part_len(parts - 1, part, size) > 0);
            }
            // Past the end: nothing, never an underflow.
            proptest::prop_assert_eq!(part_len(parts + extra, part, size), 0);
            proptest::prop_assert_eq!(part_len(u64::MAX, part, size), 0);
        }
    }
}
