//! Writing a streamed download to disk off the async runtime.
//!
//! One dedicated thread hashes and writes each chunk (through a 512 KiB buffer), fed by a
//! bounded channel, so the network task never waits on the disk unless the disk is the
//! bottleneck, and memory stays bounded whatever the object size. A second thread asks the
//! kernel to flush what has been written every [`FLUSH_EVERY`] bytes (`fdatasync` on a clone
//! of the descriptor), so the `fsync` required before publishing waits only for the tail
//! instead of the whole file: on a 1 GiB object that final flush was most of the gap to a
//! client that never syncs.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use kiln::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

/// Chunks in flight between the network task and the writer (each at most a few hundred KiB
/// in practice, so this bounds memory to a few MiB).
const CHANNEL_CHUNKS: usize = 8;
/// Start flushing to disk after this many more bytes.
const FLUSH_EVERY: u64 = 64 << 20;
/// Write buffer (fewer, larger writes).
const BUFFER: usize = 512 << 10;

/// A file being written by its own thread; dropping it without [`DiskWriter::finish`]
/// abandons the file (the caller removes it).
pub(crate) struct DiskWriter {
    tx: Option<mpsc::Sender<Bytes>>,
    thread: std::thread::JoinHandle<std::io::Result<(Digest, u64)>>,
}

impl DiskWriter {
    /// Creates `dest` and starts the writer thread.
    ///
    /// # Errors
    /// Creating the file or spawning the thread.
    pub(crate) fn create(dest: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(dest)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name(format!("kiln-agent-write-{name}"))
            .spawn(move || write_all(file, rx))?;
        Ok(Self {
            tx: Some(tx),
            thread,
        })
    }

    /// Hands a chunk to the writer; waits only while the channel is full.
    ///
    /// # Errors
    /// The writer stopped (a write failed); [`DiskWriter::finish`] returns its error.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), Stopped> {
        match &self.tx {
            Some(tx) => tx.send(chunk).await.map_err(|_| Stopped),
            None => Err(Stopped),
        }
    }

    /// Ends the stream, waits for every byte to be written and synced, and returns the
    /// digest and size of what was written.
    ///
    /// # Errors
    /// The first write or sync error.
    pub(crate) async fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        drop(self.tx.take());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("the disk writer thread panicked"))?
    }
}

/// The writer thread stopped early; its error comes from [`DiskWriter::finish`].
#[derive(Debug)]
pub(crate) struct Stopped;

fn write_all(file: std::fs::File, mut rx: mpsc::Receiver<Bytes>) -> std::io::Result<(Digest, u64)> {
    let flusher = file.try_clone()?;
    let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let flush_thread = std::thread::Builder::new()
        .name("kiln-agent-flush".into())
        .spawn(move || {
            // Errors here surface again at the final sync, which the caller checks.
            while flush_rx.recv().is_ok() {
                let _ = flusher.sync_data();
            }
        })?;
    let mut out = std::io::BufWriter::with_capacity(BUFFER, file);
    let mut hasher = Sha256::new();
    let (mut total, mut unflushed) = (0u64, 0u64);
    let result = (|| {
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            out.write_all(&chunk)?;
            total += chunk.len() as u64;
            unflushed += chunk.len() as u64;
            if unflushed >= FLUSH_EVERY {
                out.flush()?;
                // A flush already running is enough; never queue more than one.
                let _ = flush_tx.try_send(());
                unflushed = 0;
            }
        }
        out.flush()
    })();
    drop(flush_tx);
    let _ = flush_thread.join();
    result?;
    out.get_ref().sync_all()?;
    Ok((Digest::from_bytes(hasher.finalize().into()), total))
}
