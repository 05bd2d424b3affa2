//! How a large object travels: `parallelism` ranged GETs at once, or one GET streamed in order,
//! both pinned to one object version (`if_match` on the ETag) and both writing whole parts into
//! the same preallocated, journaled partial file (`parts`), so either resumes after a restart.
//!
//! Which is faster depends on the store, not on the object: some serve a range GET far slower
//! than a plain stream (moto re-reads the object for each range: 21 vs 316 MiB/s in
//! `benches/RESULTS.md`), others serve parallel ranges far faster than one connection
//! (`s3s-fs`: 204 vs 130 MiB/s). With `transfer: auto` each large download measures both on
//! its own bytes and continues the faster way, losing no byte to the measurement:
//!
//! 1. one GET streams the object in order (a plain GET of the whole object on a fresh
//!    download); its rate is taken over the first two parts, from the first byte (the
//!    request's start-up is paid once by a stream);
//! 2. while that stream waits (unread), one part past its end is fetched by a ranged GET
//!    alone (the scout); if `parallelism` GETs at its rate could not beat the stream by
//!    [`RANGED_MARGIN`], it is stopped and the stream goes on: a store whose every range GET
//!    is expensive (moto reads the whole object for each) is asked for one range, not many;
//! 3. else the next `parallelism` parts are fetched as ranged GETs at once; their rate is the
//!    bytes over the wall time, request start-up included (ranged parts pay it for every
//!    part), and they are chosen only if they moved bytes [`RANGED_MARGIN`] times faster than
//!    the stream. If they can no longer (still running after their bytes' time at the
//!    stream's rate ÷ the margin), they are stopped. When the stream is kept it simply goes
//!    on to its end, over the probed parts too (no second request; those that finished are
//!    written again with the same bytes).
//!
//! Every large download (and every retry of one) measures again: the probe costs almost
//! nothing either way, and a choice kept from an unlucky measurement (a retried 503 during
//! it) would otherwise stick. While it runs a model holds `parallelism + 1` connections.
//!
//! The choice and both rates are in `/status` and in
//! `kiln_agent_transfer_throughput_bytes_per_second{model,mode}`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use kiln::Digest;
use serde::Serialize;

use crate::config::{PartPlan, Transfer};
use crate::disk::{blocking, write_error};
use crate::error::Result;
use crate::fetch::ObjectFetch;
use crate::parts::{part_len, Finisher};

/// How a large object moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One GET, streamed in order.
    Stream,
    /// Parallel ranged GETs.
    Ranged,
}

impl Mode {
    /// The mode's name in `/status` and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Ranged => "ranged",
        }
    }
}

/// How a model's large objects are fetched, and why: what `/status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferChoice {
    /// The way used.
    pub mode: Mode,
    /// `configured` (`transfer: ranged|stream`), `measured` (`auto`, both rates below),
    /// `measured; ranged parts stopped early, slower than one stream` (they could no longer
    /// win, so they were not waited for: their rate is what they moved until then), or `too
    /// few parts to measure` (`auto` on an object with fewer than `parallelism + 3` whole
    /// parts left: ranged).
    pub reason: &'static str,
    /// One stream's measured rate, bytes per second (`measured` only).
    pub stream_bytes_per_second: Option<f64>,
    /// Ranged parts' measured rate, bytes per second (`measured` only).
    pub ranged_bytes_per_second: Option<f64>,
}

const TOO_FEW: &str = "too few parts to measure";
const STOPPED: &str = "measured; ranged parts stopped early, slower than one stream";

/// Ranged parts are chosen only if they move bytes this many times faster than one stream:
/// below that, one connection to the store is worth more than a small gain.
pub const RANGED_MARGIN: f64 = 1.2;

/// Whether ranged parts beat one stream by [`RANGED_MARGIN`] (rates in bytes per second).
pub fn prefer_ranged(stream: f64, ranged: f64) -> bool {
    ranged > stream * RANGED_MARGIN
}

/// Downloads `fetch`'s object into `partial` in parts of `plan.part_size`, resuming from its
/// journal, the way `plan.transfer` says (`auto`: measured on this download's own first
/// parts, every time: a store's behaviour can change, and the probe costs almost nothing).
/// Every choice made is passed to `record`. Returns the digest and size. The journal is
/// removed on success; on failure both files stay for the next try.
///
/// # Errors
/// Store errors (transient ones are retried by the caller), [`AgentError::DiskFull`],
/// [`AgentError::Io`].
pub(crate) async fn download(
    fetch: ObjectFetch<'_>,
    partial: &Path,
    plan: PartPlan,
    record: &(dyn Fn(TransferChoice) + Sync),
) -> Result<(Digest, u64)> {
    let part_size = plan.part_size.max(1);
    let mut fin = Finisher::open(fetch, partial, part_size).await?;
    let todo = fin.todo();
    if todo.len() as u64 != fetch.size().div_ceil(part_size) {
        tracing::info!(
            model = fetch.model,
            parts_left = todo.len(),
            "resuming a download from its journal"
        );
    }
    let moved = Move {
        fetch,
        part_size,
        parallelism: plan.parallelism.max(1),
        counted: None,
    };
    let result = moved.all(&mut fin, &todo, plan.transfer, record).await;
    // Whatever happened, no finish runs on after this attempt.
    let settled = fin.settle().await;
    result?;
    let (file, progress) = settled?;
    let path = partial.to_owned();
    let digest = blocking(move || progress.complete(&file, &path)).await??;
    Ok((digest, fetch.size()))
}

/// One object's parts on their way.
#[derive(Clone, Copy)]
struct Move<'a> {
    fetch: ObjectFetch<'a>,
    part_size: u64,
    parallelism: usize,
    /// Counts the bytes received (while measuring ranged parts).
    counted: Option<&'a AtomicU64>,
}

impl Move<'_> {
    /// Moves every part in `todo` (sorted), choosing the way first.
    async fn all(
        &self,
        fin: &mut Finisher<'_>,
        todo: &[u64],
        transfer: Transfer,
        record: &(dyn Fn(TransferChoice) + Sync),
    ) -> Result<()> {
        if todo.is_empty() {
            // Every part is journaled already (stopped between the last part and the end).
            return Ok(());
        }
        let (mode, reason) = match transfer {
            Transfer::Ranged => (Mode::Ranged, "configured"),
            Transfer::Stream => (Mode::Stream, "configured"),
            Transfer::Auto => {
                // The probe needs a contiguous run: two parts for the stream, one whole part
                // for a first ranged GET and `parallelism` for the ranged GETs past it (the
                // object's short last part would make them look slower than they are: it
                // stays out).
                let mut run = contiguous(todo);
                let size = self.fetch.size();
                if run > 0
                    && todo[run - 1] == size.div_ceil(self.part_size) - 1
                    && part_len(todo[run - 1], self.part_size, size) < self.part_size
                {
                    run -= 1;
                }
                if run >= self.parallelism + 3 {
                    return self.probe(fin, todo, run, record).await;
                }
                (Mode::Ranged, TOO_FEW)
            }
        };
        // Chosen without measuring: no rates.
        record(TransferChoice {
            mode,
            reason,
            stream_bytes_per_second: None,
            ranged_bytes_per_second: None,
        });
        match mode {
            Mode::Ranged => self.ranged(fin, todo, true).await.map(drop),
            Mode::Stream => self.stream(fin, todo).await,
        }
    }

    /// Measures one stream against ranged parts on the first `run` parts of `todo` (all
    /// contiguous), records the choice and moves everything the faster way.
    async fn probe(
        &self,
        fin: &mut Finisher<'_>,
        todo: &[u64],
        run: usize,
        record: &(dyn Fn(TransferChoice) + Sync),
    ) -> Result<()> {
        let n = self.parallelism;
        let (head, scout, tail, after) = (
            &todo[..run - n - 1],
            &todo[run - n - 1..run - n],
            &todo[run - n..run],
            &todo[run..],
        );
        // The stream covers the whole contiguous run (the short last part too): if it is
        // chosen, it goes on through the probed parts (writing again the bytes of those that
        // finished, the same bytes) rather than paying a second request; on a fresh download
        // it is a plain GET of the whole object.
        let full = contiguous(todo);
        let mut stream = PartStream::open(*self, fin, todo[0], todo[full - 1] + 1).await?;
        // Its rate over its first two parts (the head has two at least): one part alone can
        // read high, served from buffers filled before it was read.
        let mut streamed = 0;
        for _ in 0..2 {
            let Some(p) = stream.next_part().await? else {
                return Err(self
                    .fetch
                    .broken("the stream ended before its first parts".into()));
            };
            streamed += part_len(p, self.part_size, self.fetch.size());
            fin.finish(p).await?;
        }
        let stream_rate = streamed as f64 / stream.since_first_byte().max(1e-6);

        // First one ranged GET alone (the scout): ranged parts can only win if `parallelism`
        // of them at its rate beat the stream. A store whose range GETs are slow (each costing
        // it a read of the whole object, as moto's) is then asked for one range, not
        // `parallelism`, before the stream goes on.
        let scout_bytes = self.bytes_of(scout);
        let scouted = self
            .measure(
                fin,
                scout,
                scout_bytes as f64 * n as f64 / (stream_rate * RANGED_MARGIN),
            )
            .await?;
        let (mode, stopped, ranged_rate) = match scouted {
            Err(rate) => (Mode::Stream, true, rate),
            Ok(_) => {
                // Then `parallelism` at once: they win only if they finish within their
                // bytes' time at the stream's rate / the margin; past it they are stopped.
                let bytes = self.bytes_of(tail) as f64;
                match self
                    .measure(fin, tail, bytes / (stream_rate * RANGED_MARGIN))
                    .await?
                {
                    Err(rate) => (Mode::Stream, true, rate),
                    Ok(rate) if prefer_ranged(stream_rate, rate) => (Mode::Ranged, false, rate),
                    Ok(rate) => (Mode::Stream, false, rate),
                }
            }
        };
        tracing::info!(
            model = self.fetch.model,
            mode = mode.name(),
            stream_mib_per_s = format!("{:.1}", stream_rate / 1048576.0),
            ranged_mib_per_s = format!("{:.1}", ranged_rate / 1048576.0),
            parallelism = self.parallelism,
            ranged_stopped_early = stopped,
            "transfer measured on this store"
        );
        record(TransferChoice {
            mode,
            reason: if stopped { STOPPED } else { "measured" },
            stream_bytes_per_second: Some(stream_rate),
            ranged_bytes_per_second: Some(ranged_rate),
        });
        match mode {
            Mode::Stream => {
                while let Some(p) = stream.next_part().await? {
                    if !fin.is_finished(p) {
                        fin.finish(p).await?;
                    }
                }
                self.stream(fin, &todo[full..]).await
            }
            Mode::Ranged => {
                drop(stream);
                let left: Vec<u64> = head[2..].iter().chain(after).copied().collect();
                self.ranged(fin, &left, true).await.map(drop)
            }
        }
    }

    /// Bytes of `parts`.
    fn bytes_of(&self, parts: &[u64]) -> u64 {
        parts
            .iter()
            .map(|&p| part_len(p, self.part_size, self.fetch.size()))
            .sum()
    }

    /// Fetches `parts` as ranged GETs at once within `budget_s` seconds: `Ok(rate)` (bytes
    /// per second, each request's start-up included; the parts finished) when they made it,
    /// `Err(rate)` (what they moved until then) when they were stopped, unfinished.
    async fn measure(
        &self,
        fin: &mut Finisher<'_>,
        parts: &[u64],
        budget_s: f64,
    ) -> Result<std::result::Result<f64, f64>> {
        let budget = Duration::try_from_secs_f64(budget_s).unwrap_or(Duration::MAX);
        let received = AtomicU64::new(0);
        let counting = Move {
            counted: Some(&received),
            ..*self
        };
        let started = Instant::now();
        let fetched = tokio::time::timeout(budget, counting.ranged(fin, parts, false)).await;
        let rate =
            received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64().max(1e-6);
        match fetched {
            Ok(done) => {
                for p in done? {
                    fin.finish(p).await?;
                }
                Ok(Ok(rate))
            }
            Err(_) => Ok(Err(rate)),
        }
    }

    /// Fetches `parts` as ranged GETs, `parallelism` at a time. With `finish`, each part is
    /// finished as it lands and nothing is returned; without, the caller finishes the
    /// returned parts (so a measurement does not include the `fsync`s).
    async fn ranged(
        &self,
        fin: &mut Finisher<'_>,
        parts: &[u64],
        finish: bool,
    ) -> Result<Vec<u64>> {
        let (file, path) = (Arc::clone(fin.file()), fin.path().to_owned());
        // Indices by value: a closure taking `&u64` would keep this future from being `Send`.
        let mut fetches = futures::stream::iter(parts.iter().copied().map(|p| {
            let (file, path) = (Arc::clone(&file), path.clone());
            async move {
                let mut one = PartStream::start(*self, file, path, p, p + 1).await?;
                one.next_part()
                    .await?
                    .ok_or_else(|| self.fetch.broken(format!("part {p} had no bytes")))
            }
        }))
        .buffer_unordered(self.parallelism);
        let mut unfinished = Vec::new();
        while let Some(result) = fetches.next().await {
            let p = result?;
            if finish {
                fin.finish(p).await?;
            } else {
                unfinished.push(p);
            }
        }
        Ok(unfinished)
    }

    /// Fetches `parts` (sorted) with one GET per contiguous run, streamed in order.
    async fn stream(&self, fin: &mut Finisher<'_>, parts: &[u64]) -> Result<()> {
        let mut rest = parts;
        while let Some(&first) = rest.first() {
            let run = contiguous(rest);
            let mut stream = PartStream::open(*self, fin, first, first + run as u64).await?;
            while let Some(p) = stream.next_part().await? {
                fin.finish(p).await?;
            }
            rest = &rest[run..];
        }
        Ok(())
    }
}

/// How many of `parts` (sorted) form a contiguous run from the first.
fn contiguous(parts: &[u64]) -> usize {
    parts
        .iter()
        .zip(parts.first().map_or(0, |&f| f)..)
        .take_while(|(&p, want)| p == *want)
        .count()
}

/// Below this many buffered bytes a part's chunks are collected before one blocking write.
const WRITE_BATCH: usize = 1 << 20;

/// One GET over parts `next..end` (contiguous), written part by part into the partial file.
struct PartStream<'a> {
    moved: Move<'a>,
    file: Arc<std::fs::File>,
    path: std::path::PathBuf,
    body: BoxStream<'static, object_store::Result<Bytes>>,
    /// Bytes received past the part being written (they belong to the next one).
    carry: Option<Bytes>,
    next: u64,
    end: u64,
    /// The next byte expected.
    offset: u64,
    first_byte: Option<Instant>,
}

impl<'a> PartStream<'a> {
    async fn open(moved: Move<'a>, fin: &Finisher<'_>, next: u64, end: u64) -> Result<Self> {
        Self::start(
            moved,
            Arc::clone(fin.file()),
            fin.path().to_owned(),
            next,
            end,
        )
        .await
    }

    async fn start(
        moved: Move<'a>,
        file: Arc<std::fs::File>,
        path: std::path::PathBuf,
        next: u64,
        end: u64,
    ) -> Result<Self> {
        let size = moved.fetch.size();
        let from = next.saturating_mul(moved.part_size).min(size);
        let to = end.saturating_mul(moved.part_size).min(size);
        // The whole object is a plain GET (some stores serve one far faster than a range).
        let range = (from > 0 || to < size).then_some(from..to);
        let body = moved.fetch.get(range).await?.into_stream();
        Ok(Self {
            moved,
            file,
            path,
            body,
            carry: None,
            next,
            end,
            offset: from,
            first_byte: None,
        })
    }

    /// Seconds since this stream's first byte arrived.
    fn since_first_byte(&self) -> f64 {
        self.first_byte.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Reads the next whole part onto disk (not yet durable: the caller finishes it); `None`
    /// when every part of the stream is written.
    async fn next_part(&mut self) -> Result<Option<u64>> {
        let fetch = self.moved.fetch;
        if self.next >= self.end {
            return Ok(None);
        }
        let p = self.next;
        let part_end = (p + 1)
            .saturating_mul(self.moved.part_size)
            .min(fetch.size());
        let mut batch: Vec<Bytes> = Vec::new();
        let (mut batch_len, mut batch_at) = (0usize, self.offset);
        while self.offset < part_end {
            let mut chunk = match self.carry.take() {
                Some(c) => c,
                None => match self.body.next().await {
                    Some(c) => c.map_err(|e| fetch.fail(e))?,
                    None => {
                        return Err(fetch.broken(format!(
                            "part {p} ended at byte {}, expected {part_end}",
                            self.offset
                        )))
                    }
                },
            };
            self.first_byte.get_or_insert_with(Instant::now);
            if let Some(counter) = self.moved.counted {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let take = (part_end - self.offset).min(chunk.len() as u64) as usize;
            if take < chunk.len() {
                self.carry = Some(chunk.split_off(take));
            }
            self.offset += take as u64;
            batch_len += chunk.len();
            batch.push(chunk);
            if batch_len >= WRITE_BATCH || self.offset == part_end {
                self.write(std::mem::take(&mut batch), batch_at).await?;
                (batch_len, batch_at) = (0, self.offset);
            }
        }
        self.next += 1;
        if self.next == self.end {
            let extra = match self.carry.take() {
                Some(c) => !c.is_empty(),
                None => match self.body.next().await {
                    Some(Ok(c)) => !c.is_empty(),
                    Some(Err(e)) => return Err(fetch.fail(e)),
                    None => false,
                },
            };
            if extra {
                return Err(fetch.broken("server sent more bytes than the range asked for".into()));
            }
        }
        Ok(Some(p))
    }

    /// Writes `chunks` at `at` on the blocking pool (the future holds no reference to the
    /// stream, which is not `Sync`).
    fn write(
        &self,
        chunks: Vec<Bytes>,
        at: u64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'a {
        use std::os::unix::fs::FileExt;
        let (file, path, model) = (
            Arc::clone(&self.file),
            self.path.clone(),
            self.moved.fetch.model,
        );
        async move {
            blocking(move || {
                let mut at = at;
                for c in chunks {
                    file.write_all_at(&c, at)?;
                    at += c.len() as u64;
                }
                Ok(())
            })
            .await?
            .map_err(|e| write_error(e, &path, model))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranged_parts_must_win_by_the_margin() {
        // moto in benches/RESULTS.md: ranged 21 MiB/s, one stream 316 MiB/s.
        assert!(!prefer_ranged(316.0, 21.0));
        // s3s-fs: ranged 204 MiB/s, one stream 130 MiB/s.
        assert!(prefer_ranged(130.0, 204.0));
        // Equal, or a gain under the margin: one connection.
        assert!(!prefer_ranged(100.0, 100.0));
        assert!(!prefer_ranged(100.0, 119.0));
        assert!(prefer_ranged(100.0, 121.0));
    }
}
