//! A large object's bytes on disk, in parts: a preallocated `.partial` file written in place,
//! a journal of finished parts that survives a container restart (the `emptyDir` does), so a
//! restarted agent continues where it stopped, and the digest computed in order as the
//! finished prefix grows (each part is hashed right after it and every part before it are on
//! disk, read back from the page cache), so verification needs no separate pass over the file
//! once the last part lands. How the parts travel (ranged GETs or one stream) is `transfer`'s.
//!
//! Every write, `fsync` and hash runs on tokio's blocking pool, never on the task: a model's
//! hash must not stall the other models' syncs, the status endpoints or SIGTERM.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln::Digest;
use object_store::ObjectMeta;
use sha2::{Digest as _, Sha256};

use crate::error::{AgentError, Result};
use crate::fetch::ObjectFetch;

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
/// none or stale; an index past the object's last part is ignored, and so is a last line
/// without its newline: a crash cut it).
fn load_journal(journal: &Path, identity: &str, parts: u64) -> BTreeSet<u64> {
    let Ok(text) = std::fs::read_to_string(journal) else {
        return BTreeSet::new();
    };
    let mut lines = text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'));
    if lines.next() != Some(identity) {
        return BTreeSet::new();
    }
    lines
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p| p < parts)
        .collect()
}

/// A download in parts' state on disk: the finished parts, the journal they are appended to,
/// and the hash of the finished prefix.
pub(crate) struct Progress {
    /// Parts on disk, durable and journaled.
    pub(crate) done: BTreeSet<u64>,
    journal: std::fs::File,
    journal_path: PathBuf,
    frontier: Frontier,
}

impl Progress {
    /// Opens (or, when its journal is missing or another object's, starts) a download into
    /// `partial`: the preallocated file and the journal, and the prefix already hashed.
    /// The journal lives beside `partial`; `identity` is [`journal_identity`]'s line.
    ///
    /// # Errors
    /// [`AgentError::Io`] creating, opening or reading the files.
    pub(crate) fn open(
        partial: &Path,
        identity: &str,
        parts: u64,
        part_size: u64,
        size: u64,
    ) -> Result<(Arc<std::fs::File>, Self)> {
        let journal_path = &journal_path(partial);
        let io = |p: &Path| AgentError::io(p.to_owned());
        // The journal's parts count only with the file they describe, at its full size.
        let intact = std::fs::metadata(partial).is_ok_and(|m| m.is_file() && m.len() == size);
        let done = if intact {
            load_journal(journal_path, identity, parts)
        } else {
            BTreeSet::new()
        };
        // The journal rewritten from what was read (atomically): a line torn by a crash is
        // gone, so the next append cannot join it (`1` + `2` read as part 12).
        let mut text = format!("{identity}\n");
        for p in &done {
            text.push_str(&format!("{p}\n"));
        }
        let tmp = journal_path.with_extension("journal.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, journal_path))
            .map_err(io(journal_path))?;
        if done.is_empty() {
            // Fresh start: a new file (a new inode, so a write still in flight from an
            // abandoned attempt lands in the old, unlinked one), preallocated.
            match std::fs::remove_file(partial) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(partial)(e)),
                _ => {}
            }
            let f = std::fs::File::create_new(partial).map_err(io(partial))?;
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
        // One write per line: a crash leaves a whole line or a torn one that the next open
        // drops, never half a number followed by the next.
        self.journal
            .write_all(format!("{p}\n").as_bytes())
            .and_then(|()| self.journal.sync_data())
            .map_err(AgentError::io(&self.journal_path))?;
        self.done.insert(p);
        self.frontier.advance(file, partial, &self.done)
    }
}

/// Bytes of part `p` (0 for an index past the end, never an underflow).
pub(crate) fn part_len(p: u64, part_size: u64, size: u64) -> u64 {
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

/// Finishes parts one at a time on the blocking pool ([`Progress::finished`]: `fsync`,
/// journal, prefix hash) while the caller goes on fetching: finishing part `p` waits only for
/// part `p - 1`'s finish, never for the network.
pub(crate) struct Finisher<'a> {
    held: Held,
    /// Parts finished: from the journal, and by this attempt.
    finished: BTreeSet<u64>,
    file: Arc<std::fs::File>,
    partial: PathBuf,
    fetch: ObjectFetch<'a>,
    part_size: u64,
    /// Bytes on disk so far (for progress metrics).
    downloaded: u64,
}

/// Where the progress is: here, or inside the blocking task finishing a part.
enum Held {
    Ready(Box<Progress>),
    Busy(tokio::task::JoinHandle<Result<Progress>>),
    /// A finish failed (its error was returned once).
    Failed,
}

impl<'a> Finisher<'a> {
    /// Opens (or resumes) `fetch`'s object into `partial`, in parts of `part_size` bytes.
    ///
    /// # Errors
    /// [`AgentError::Io`] creating or reading the partial file or its journal.
    pub(crate) async fn open(
        fetch: ObjectFetch<'a>,
        partial: &Path,
        part_size: u64,
    ) -> Result<Finisher<'a>> {
        let size = fetch.size();
        let parts = size.div_ceil(part_size);
        let id = journal_identity(fetch.meta, part_size);
        let path = partial.to_owned();
        let (file, progress) =
            crate::disk::blocking(move || Progress::open(&path, &id, parts, part_size, size))
                .await??;
        let downloaded = progress
            .done
            .iter()
            .map(|&p| part_len(p, part_size, size))
            .sum();
        Ok(Self {
            finished: progress.done.clone(),
            held: Held::Ready(Box::new(progress)),
            file,
            partial: partial.to_owned(),
            fetch,
            part_size,
            downloaded,
        })
    }

    /// The partial file, for writing parts into.
    pub(crate) fn file(&self) -> &Arc<std::fs::File> {
        &self.file
    }

    /// The partial file's path (for errors).
    pub(crate) fn path(&self) -> &Path {
        &self.partial
    }

    /// Parts not finished yet, in order.
    pub(crate) fn todo(&self) -> Vec<u64> {
        let parts = self.fetch.size().div_ceil(self.part_size);
        (0..parts).filter(|p| !self.is_finished(*p)).collect()
    }

    /// Whether part `p` is finished (journaled, or handed to [`Finisher::finish`]).
    pub(crate) fn is_finished(&self, p: u64) -> bool {
        self.finished.contains(&p)
    }

    /// Part `p`'s bytes are all written: make it durable, journal and hash it, in the
    /// background.
    ///
    /// # Errors
    /// The previous part's finish failed.
    pub(crate) async fn finish(&mut self, p: u64) -> Result<()> {
        let mut progress = self.take().await?;
        self.finished.insert(p);
        let (file, path) = (Arc::clone(&self.file), self.partial.clone());
        self.held = Held::Busy(tokio::task::spawn_blocking(move || {
            progress.finished(&file, &path, p).map(|()| progress)
        }));
        let len = part_len(p, self.part_size, self.fetch.size());
        self.downloaded += len;
        self.fetch
            .metrics
            .downloaded(self.fetch.model, len, self.downloaded, self.fetch.size());
        Ok(())
    }

    /// Waits for the last finish; then the progress is settled (whatever the caller's outcome:
    /// no background write outlives the attempt).
    ///
    /// # Errors
    /// A finish failed.
    pub(crate) async fn settle(mut self) -> Result<(Arc<std::fs::File>, Progress)> {
        let progress = self.take().await?;
        Ok((self.file, progress))
    }

    async fn take(&mut self) -> Result<Progress> {
        match std::mem::replace(&mut self.held, Held::Failed) {
            Held::Ready(p) => Ok(*p),
            Held::Busy(job) => job.await.map_err(|e| AgentError::Io {
                path: self.partial.clone(),
                source: std::io::Error::other(format!("finishing a part failed: {e}")),
            })?,
            Held::Failed => Err(AgentError::Io {
                path: self.partial.clone(),
                source: std::io::Error::other("an earlier part failed to finish"),
            }),
        }
    }
}

impl Progress {
    /// The digest of the whole object, once every part is finished: the file made durable and
    /// the journal removed (nothing is left to resume).
    ///
    /// # Errors
    /// [`AgentError::Io`] from the final `fsync`.
    pub(crate) fn complete(self, file: &std::fs::File, partial: &Path) -> Result<Digest> {
        file.sync_all().map_err(AgentError::io(partial))?;
        let _ = std::fs::remove_file(&self.journal_path);
        Ok(Digest::from_bytes(self.frontier.hasher.finalize().into()))
    }
}

/// Removes a partial download and its journal (after a digest mismatch).
pub(crate) fn discard(partial: &Path) {
    // The journal first: a journal without its file is never left to describe nothing.
    let _ = std::fs::remove_file(journal_path(partial));
    let _ = std::fs::remove_file(partial);
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path as StorePath;

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

    #[test]
    fn a_line_torn_by_a_crash_is_dropped_and_cannot_join_the_next() {
        let dir = tempfile::tempdir().expect("dir");
        let partial = dir.path().join("f.partial");
        let m = meta(4 << 10);
        let id = journal_identity(&m, 1 << 10);
        std::fs::write(&partial, vec![7u8; 4 << 10]).expect("partial");
        // Part 0 finished; the crash cut "1\n" after its digit.
        std::fs::write(journal_path(&partial), format!("{id}\n0\n1")).expect("journal");
        let (file, mut progress) =
            Progress::open(&partial, &id, 4, 1 << 10, 4 << 10).expect("open");
        assert_eq!(
            progress.done,
            BTreeSet::from([0]),
            "the torn line is not a part"
        );
        progress
            .finished(&file, &partial, 2)
            .expect("finish part 2");
        let text = std::fs::read_to_string(journal_path(&partial)).expect("journal");
        assert_eq!(text, format!("{id}\n0\n2\n"), "no `12`");
        // A journal whose file is gone (or of another size) describes nothing.
        std::fs::remove_file(&partial).expect("rm");
        let (_file, progress) = Progress::open(&partial, &id, 4, 1 << 10, 4 << 10).expect("fresh");
        assert!(progress.done.is_empty());
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
