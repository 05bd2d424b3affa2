//! Large objects: parallel ranged GETs pinned to one object version (`if_match` on the ETag),
//! written in place into a preallocated `.partial` file, with a journal of finished parts that
//! survives a container restart (the `emptyDir` does), so a restarted agent continues where it
//! stopped. Memory is bounded by `parallelism` streams, not by the object's size.
//!
//! The digest is computed in order as the finished prefix grows (each part is hashed right
//! after it and every part before it are on disk, read back from the page cache), so
//! verification needs no separate pass over the file once the last part lands.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use kiln::Digest;
use object_store::path::Path as StorePath;
use object_store::{GetRange, ObjectMeta, ObjectStore};
use sha2::{Digest as _, Sha256};

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

/// The journal: the object identity it belongs to, then one finished part index per line.
fn journal_path(partial: &Path) -> PathBuf {
    let mut p = partial.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

fn identity(meta: &ObjectMeta) -> String {
    format!(
        "size={} etag={} version={}",
        meta.size,
        meta.e_tag.as_deref().unwrap_or("-"),
        meta.version.as_deref().unwrap_or("-")
    )
}

/// Parts already finished for this exact object, per the journal (empty if none or stale).
fn load_journal(journal: &Path, meta: &ObjectMeta) -> BTreeSet<u64> {
    let Ok(text) = std::fs::read_to_string(journal) else {
        return BTreeSet::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(identity(meta).as_str()) {
        return BTreeSet::new();
    }
    lines.filter_map(|l| l.trim().parse().ok()).collect()
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
    let mut done = load_journal(&journal, meta);
    if done.is_empty() {
        // Fresh start: a new identity line, a preallocated file.
        std::fs::write(&journal, format!("{}\n", identity(meta))).map_err(io(&journal))?;
        let f = std::fs::File::create(partial).map_err(io(partial))?;
        f.set_len(meta.size).map_err(io(partial))?;
    } else {
        tracing::info!(
            model,
            parts_done = done.len(),
            "resuming a download from its journal"
        );
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(partial)
        .map_err(io(partial))?;
    let part_size = plan.part_size.max(1);
    let parts = meta.size.div_ceil(part_size);
    let todo: Vec<u64> = (0..parts).filter(|p| !done.contains(p)).collect();
    let resumed_bytes: u64 = done
        .iter()
        .map(|&p| part_len(p, part_size, meta.size))
        .sum();
    let mut downloaded = resumed_bytes;

    // Hash the finished prefix as it grows.
    let mut frontier = Frontier {
        next: 0,
        parts,
        part_size,
        size: meta.size,
        hasher: Sha256::new(),
    };
    let mut journal_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .map_err(io(&journal))?;
    frontier.advance(&file, partial, &done)?;

    let mut fetches = futures::stream::iter(todo.into_iter().map(|p| {
        let file = &file;
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
                file.write_all_at(&chunk, offset)
                    .map_err(|e| AgentError::Io {
                        path: partial.to_owned(),
                        source: e,
                    })?;
                offset += chunk.len() as u64;
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
        file.sync_data().map_err(io(partial))?;
        writeln!(journal_file, "{p}")
            .and_then(|()| journal_file.sync_data())
            .map_err(io(&journal))?;
        done.insert(p);
        downloaded += part_len(p, part_size, meta.size);
        metrics.downloaded(
            model,
            part_len(p, part_size, meta.size),
            downloaded,
            meta.size,
        );
        frontier.advance(&file, partial, &done)?;
    }
    drop(fetches);
    file.sync_all().map_err(io(partial))?;
    let _ = std::fs::remove_file(&journal);
    Ok((
        Digest::from_bytes(frontier.hasher.finalize().into()),
        meta.size,
    ))
}

fn part_len(p: u64, part_size: u64, size: u64) -> u64 {
    (size - p * part_size).min(part_size)
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
