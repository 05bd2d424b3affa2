//! Request-body buffers kept from one request for the next.
//!
//! glibc serves every block of 128 KiB or more (`memory::MMAP_THRESHOLD`, pinned so model
//! swaps give memory back) with its own `mmap`, and unmaps it on `free`. A request body that
//! size — a 3×64×64 FP32 image is about 250 KB of JSON — thus had every page of its buffer
//! faulted in and zeroed by the kernel as it arrived, then unmapped (a TLB flush on every
//! CPU) once decoded: measured with `perf` under `hey` at concurrency 64, a fifth of the
//! server's CPU time per request went to that. A buffer taken from here has its pages
//! already; it comes back when its request is decoded.
//!
//! Bounded: at most [`KEEP_BUFFERS`] buffers of at most [`KEEP_MAX_BYTES`] each are kept
//! (their pages stay resident while idle); a bigger body, or one past that count, is
//! allocated and freed as before. Bodies under the mmap threshold come from malloc's heap,
//! which is cheap already, and are not kept.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use crate::memory::MMAP_THRESHOLD;

/// Most buffers kept at once.
pub(crate) const KEEP_BUFFERS: usize = 8;
/// Largest buffer kept, bytes.
pub(crate) const KEEP_MAX_BYTES: usize = 4 << 20;

/// Buffers kept for the next bodies.
#[derive(Debug, Default)]
pub(crate) struct BodyPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BodyPool {
    /// An empty buffer with room for `len` bytes: a kept one when one is big enough, else a
    /// new one.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBody {
        let kept = (len >= MMAP_THRESHOLD).then(|| {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            // The smallest that holds `len`.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)?;
            Some(free.swap_remove(best))
        });
        PooledBody {
            buf: kept.flatten().unwrap_or_else(|| Vec::with_capacity(len)),
            pool: Arc::clone(self),
        }
    }

    /// Keeps `buf` (emptied) if it is worth keeping and there is room.
    fn give(&self, mut buf: Vec<u8>) {
        if !(MMAP_THRESHOLD..=KEEP_MAX_BYTES).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < KEEP_BUFFERS {
            free.push(buf);
        }
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A body's bytes in a buffer that goes back to its [`BodyPool`] when dropped.
#[derive(Debug)]
pub(crate) struct PooledBody {
    buf: Vec<u8>,
    pool: Arc<BodyPool>,
}

impl PooledBody {
    /// Appends `data`.
    pub(crate) fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Room for `total` bytes in all, so that appending up to that never copies what is
    /// there.
    pub(crate) fn reserve_total(&mut self, total: usize) {
        self.buf.reserve(total.saturating_sub(self.buf.len()));
    }
}

impl Deref for PooledBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_buffers_come_back_and_are_reused_small_and_huge_ones_are_not() {
        let pool = Arc::new(BodyPool::default());
        let mut body = pool.take(200 << 10);
        body.extend_from_slice(b"abc");
        let at = body.buf.as_ptr();
        assert_eq!(&*body, b"abc");
        drop(body);
        assert_eq!(pool.kept(), 1);
        let again = pool.take(150 << 10);
        assert_eq!(again.buf.as_ptr(), at, "the kept buffer, reused");
        assert!(again.is_empty(), "handed out empty");
        // A bigger body than any kept buffer gets a new one.
        let bigger = pool.take(300 << 10);
        assert_ne!(bigger.buf.as_ptr(), at);
        drop((again, bigger));
        assert_eq!(pool.kept(), 2);
        drop(pool.take(10));
        drop(pool.take(KEEP_MAX_BYTES + 1));
        assert_eq!(pool.kept(), 2, "small and huge buffers are not kept");
        let many: Vec<_> = (0..KEEP_BUFFERS + 3)
            .map(|_| pool.take(MMAP_THRESHOLD))
            .collect();
        drop(many);
        assert_eq!(pool.kept(), KEEP_BUFFERS, "at most KEEP_BUFFERS kept");
    }

    #[test]
    fn readme_states_the_bounds() {
        let stated = format!(
            "bodies of {} KiB to {} MiB land in buffers kept for the next request \
             (at most {}, so up to {} MiB",
            MMAP_THRESHOLD >> 10,
            KEEP_MAX_BYTES >> 20,
            KEEP_BUFFERS,
            (KEEP_BUFFERS * KEEP_MAX_BYTES) >> 20
        );
        crate::http::assert_readme_states(&stated);
    }
}
