//! Inference bodies read into one buffer, then decoded off the tokio workers within a memory
//! budget.
//!
//! [`Decoder::receive`] copies a body into a buffer sized from its `Content-Length` (kept from
//! an earlier body when one is, `body_pool`) as it arrives, in small pieces between other
//! tasks: `axum::body::to_bytes` keeps a list of chunks and copies them into one at the end,
//! twice the body in memory and a 32 MiB copy in one go on a worker (probes then waited up to
//! 110 ms, four bodies finishing at once on two CPUs).
//!
//! A maximal JSON body (32 MiB of `0,0,0,…`) takes a CPU about a quarter of a second to decode
//! (release build) and becomes tensors twice its size (FP32). Decoded on a tokio worker, it
//! stalls all that worker serves, liveness probes included; decoded for every client at once,
//! its memory multiplies. So a body of [`INLINE_MAX_BYTES`] or more is decoded on tokio's
//! blocking pool, once it holds permits for its size (in KiB) from a fixed budget and one of a
//! fixed number of slots: at most that many bytes of bodies are being decoded at any moment
//! (memory), on at most one thread fewer than there are CPUs, so the workers always keep one
//! — except on two CPUs, where one decode thread would cap JSON throughput at one CPU's parse
//! rate (with a decode on each of two CPUs, probes took up to 28 ms, against 8 ms). The rest wait,
//! in arrival order (tokio's semaphores are fair), holding no thread. Smaller bodies decode
//! inline: they hold a worker well under a millisecond, not worth a thread. The checks
//! themselves are all in the protocol's reader the decoder runs ([`protocol::decode`] for
//! v2, `v1::request::decode` for KServe's v1).

use std::sync::Arc;
use std::time::Duration;

use crate::NamedTensors;
use axum::body::{Body, HttpBody as _};
use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::body_pool::{BodyPool, PooledBody};
use crate::http::compression::{Coding, Inflate};
use crate::http::error::ApiError;
use crate::http::protocol::{self, InferRequest, Limits};

/// Bodies under this many bytes decode on the calling task: one of 64 KiB holds a worker for
/// 0.15 ms (`0.123456789,…`) to 0.4 ms (`0,0,…`, the densest), a hop to the blocking pool
/// and back costs about 35 µs (release build, two shared CPUs).
pub(crate) const INLINE_MAX_BYTES: usize = 64 << 10;

/// Reads request bodies into kept buffers and decodes them, at most `budget` bytes of them
/// at a time.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Buffers for the bodies (`body_pool`).
    bodies: Arc<BodyPool>,
    /// One permit per KiB of body being decoded.
    permits: Arc<Semaphore>,
    /// All the permits there are.
    budget_kib: u32,
    /// One permit per body being decoded off the workers: the CPUs less one, at least one.
    slots: Arc<Semaphore>,
    /// What a request's inputs may declare: elements an input, strings a request (over → 413).
    limits: Limits,
}

impl Decoder {
    /// A decoder letting `budget_bytes` of bodies decode at once (at least one body of any
    /// size: a body over the whole budget waits for all of it), on [`decode_threads`] of the
    /// CPUs this process may use, each input within `limits`.
    pub(crate) fn new(budget_bytes: usize, limits: Limits) -> Self {
        let budget_kib = u32::try_from(budget_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            bodies: Arc::default(),
            permits: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            slots: Arc::new(Semaphore::new(decode_threads(cpus))),
            limits,
        }
    }

    /// [`protocol::decode`] of `body` (with the binary extension's `header_len`, if sent) sent
    /// in `coding`, as [`Decoder::parse_encoded`] runs it.
    ///
    /// # Errors
    /// As [`Decoder::parse_encoded`].
    pub(crate) async fn decode_encoded<B: AsRef<[u8]> + Send + 'static>(
        &self,
        body: B,
        share: Option<OwnedSemaphorePermit>,
        coding: Option<Coding>,
        header_len: Option<&str>,
        limit: usize,
    ) -> Result<(InferRequest<'static>, NamedTensors), ApiError> {
        self.parse_encoded(body, share, coding, limit, self.v2(header_len))
            .await
    }

    /// The v2 protocol's reading of a body: [`protocol::decode`] with `header_len`.
    fn v2(
        &self,
        header_len: Option<&str>,
    ) -> impl Fn(&[u8]) -> Result<(InferRequest<'static>, NamedTensors), ApiError> + Clone + Send + 'static
    {
        let limits = self.limits;
        let header_len = header_len.map(str::to_owned);
        move |body: &[u8]| {
            protocol::decode(body, header_len.as_deref(), limits).map_err(ApiError::from)
        }
    }

    /// What a request's inputs may declare, for a request's reader to take a copy of.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// `read` of `body` (a protocol's whole reading of a request: the v2 JSON, KServe's v1
    /// instances), on a blocking thread once its share of the budget is free when the body is
    /// big (under `share`, the one it was read under, if it has one), inline when it is small.
    ///
    /// # Errors
    /// `read`'s; 500 if it panicked.
    pub(crate) async fn parse<B, T, R>(
        &self,
        body: B,
        share: Option<OwnedSemaphorePermit>,
        read: R,
    ) -> Result<T, ApiError>
    where
        B: AsRef<[u8]> + Send + 'static,
        T: Send + 'static,
        R: Fn(&[u8]) -> Result<T, ApiError> + Send + 'static,
    {
        let len = body.as_ref().len();
        if len < INLINE_MAX_BYTES {
            return read(body.as_ref());
        }
        let bytes = match share {
            Some(mut share) => {
                shrink(&mut share, len);
                share
            }
            None => self.reserve(len).await?,
        };
        self.off_workers(move || {
            let decoded = read(body.as_ref());
            // The body and its share of the budget go as soon as the tensors are built.
            drop((body, bytes));
            decoded
        })
        .await?
    }

    /// [`Decoder::parse`] of a body sent in `coding` (`Content-Encoding`), inflated to at most
    /// `limit` bytes first. A small body that inflates to under [`INLINE_MAX_BYTES`] is
    /// inflated and read inline, as any small body; any other is inflated and read on a
    /// decode thread holding a share of the budget: of the size a gzip trailer names when that
    /// is under `limit` (inflating stops there), else — deflate, or a trailer that
    /// understated it — of `limit`, the most it may inflate to (its compressed size says
    /// nothing of that); once inflated, it is read holding only its inflated size's share.
    ///
    /// A body read under a `share` ([`Decoder::receive`]: its own size and a whole limit more,
    /// for what it inflates to) is inflated and read under that share alone: waiting for a
    /// second share while holding the first could hold the budget in pieces nobody can add
    /// to.
    ///
    /// # Errors
    /// As [`Decoder::parse`]; 413 past `limit` inflated, 400 for a body not in `coding`.
    pub(crate) async fn parse_encoded<B, T, R>(
        &self,
        body: B,
        share: Option<OwnedSemaphorePermit>,
        coding: Option<Coding>,
        limit: usize,
        read: R,
    ) -> Result<T, ApiError>
    where
        B: AsRef<[u8]> + Send + 'static,
        T: Send + 'static,
        R: Fn(&[u8]) -> Result<T, ApiError> + Clone + Send + 'static,
    {
        let Some(coding) = coding else {
            return self.parse(body, share, read).await;
        };
        if let Some(plain) = coding.inflate_small(body.as_ref(), limit)? {
            return read(&plain);
        }
        if let Some(mut bytes) = share {
            return self
                .off_workers(move || {
                    let plain = coding.inflate(body.as_ref(), limit);
                    drop(body);
                    if let Ok(plain) = &plain {
                        shrink(&mut bytes, plain.len());
                    }
                    let decoded = plain.map_err(ApiError::from).and_then(|plain| read(&plain));
                    drop(bytes);
                    decoded
                })
                .await?;
        }
        // First the share of the size gzip's trailer names, when under the limit, so
        // compressed bodies do not each hold a whole limit's share; inflating stops there, and
        // a trailer that understated it (several members, or a lie) gives the body back to be
        // inflated again under a whole share.
        let hint = coding.size_hint(body.as_ref()).filter(|&h| h < limit);
        let mut body = body;
        for cap in hint.into_iter().chain([limit]) {
            let mut bytes = self.reserve(cap).await?;
            let read = read.clone();
            let attempt = self
                .off_workers(move || match coding.inflate(body.as_ref(), cap) {
                    Err(Inflate::TooLarge { .. }) if cap < limit => Err(body),
                    plain => {
                        drop(body);
                        // Decoded holding the inflated size's share, not the cap's.
                        if let Ok(plain) = &plain {
                            shrink(&mut bytes, plain.len());
                        }
                        let decoded = plain.map_err(ApiError::from).and_then(|plain| read(&plain));
                        drop(bytes);
                        Ok(decoded)
                    }
                })
                .await?;
            match attempt {
                Ok(decoded) => return decoded,
                Err(returned) => body = returned,
            }
        }
        // (The last attempt's cap is the limit, which answers past it itself.)
        Err(Inflate::TooLarge { limit }.into())
    }

    /// Runs `work` on tokio's blocking pool once one of the decode slots is free (a slot per
    /// decode thread, waited for in arrival order).
    ///
    /// # Errors
    /// 500 if `work` panicked.
    pub(crate) async fn off_workers<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m);
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|e| internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let done = work();
            drop(slot);
            done
        })
        .await
        .map_err(|e| {
            internal(format!(
                "decoding or encoding on a decode thread failed: {e}"
            ))
        })
    }

    /// `len` bytes' share of the budget (all of it for more than the whole budget), waited
    /// for in arrival order and held until the returned permit is dropped. The gRPC door
    /// holds one per big message from its arrival until it is answered
    /// (`crate::http::grpc::budget`).
    ///
    /// # Errors
    /// None in practice (the semaphore is never closed): 500 if it were.
    pub(crate) async fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.budget_kib);
        Arc::clone(&self.permits)
            .acquire_many_owned(kib)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// The whole of `body` as an inference request's body is read: refused at once (413) if
    /// its `Content-Length` is over `limit`; a body that declares [`INLINE_MAX_BYTES`] or more
    /// first waits for its share of the budget (its declared size; a whole limit more if
    /// `compressed`, for what it inflates to), and one that declares no size takes a whole
    /// limit's share once it has sent that much, so the bodies held in memory, read or being
    /// read, stay within the budget (read first, they were held in full by every client at
    /// once while waiting for their share). The reading, not the wait for a share, is bounded
    /// by `timeout` (408).
    ///
    /// # Errors
    /// 413 over `limit`, 408 past `timeout`, 400 if the body failed.
    pub(crate) async fn receive(
        &self,
        body: Body,
        limit: usize,
        timeout: Duration,
        compressed: bool,
    ) -> Result<Received, ApiError> {
        use http_body_util::BodyExt as _;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the {limit}-byte limit"),
            )
        };
        let declared = body
            .size_hint()
            .exact()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let extra = if compressed { limit } else { 0 };
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut share = None;
        if let Some(n) = declared.filter(|&n| n >= INLINE_MAX_BYTES) {
            share = Some(self.reserve(n.saturating_add(extra)).await?);
            deadline = tokio::time::Instant::now() + timeout;
        }
        let mut body = http_body_util::Limited::new(body, limit);
        let mut buf = self.bodies.take(declared.unwrap_or(0).min(limit));
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request body did not arrive within {} s",
                            timeout.as_secs_f64()
                        ),
                    ))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(if e.is::<http_body_util::LengthLimitError>() {
                        too_large()
                    } else {
                        ApiError::bad_request(format!("reading the request body: {e}"))
                    })
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            if share.is_none() && declared.is_none() && buf.len() >= INLINE_MAX_BYTES {
                let waited = tokio::time::Instant::now();
                share = Some(self.reserve(limit.saturating_add(extra)).await?);
                deadline += waited.elapsed();
                // Room for the whole limit at once: growing by doubling would copy up to
                // 32 MiB on this worker and hold two buffers beyond the share meanwhile.
                buf.reserve_total(limit);
            }
        }
        Ok(Received { body: buf, share })
    }
}

/// A request body read whole ([`Decoder::receive`]), and the share of the decode budget it
/// was read under, if it is big, for it to be decoded under.
pub(crate) struct Received {
    /// The body.
    pub(crate) body: PooledBody,
    /// Its share, if it is big.
    pub(crate) share: Option<OwnedSemaphorePermit>,
}

/// Gives back what `share` (a [`Decoder::reserve`] permit) holds beyond `len` bytes' share:
/// once a compressed body or message is inflated, what it holds is its inflated size, not the
/// most it might have been.
pub(crate) fn shrink(share: &mut OwnedSemaphorePermit, len: usize) {
    let keep = len.div_ceil(1024);
    if let Some(excess) = share.num_permits().checked_sub(keep).filter(|&n| n > 0) {
        drop(share.split(excess));
    }
}

/// Decode threads for `cpus` CPUs: every CPU but one, so the workers keep one for probes and
/// small requests — but on two CPUs both, because one decode thread caps JSON throughput at
/// what one CPU parses (about 1,080 req/s of a 3x48x192 FP32 image, against 6,200 in binary)
/// while probes stay far under 100 ms with both busy (28 ms seen).
fn decode_threads(cpus: usize) -> usize {
    if cpus <= 2 {
        cpus.max(1)
    } else {
        cpus - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use std::time::Duration;

    impl Decoder {
        /// [`Decoder::decode_encoded`] of a plain body.
        async fn decode<B: AsRef<[u8]> + Send + 'static>(
            &self,
            body: B,
            header_len: Option<&str>,
        ) -> Result<(InferRequest<'static>, NamedTensors), ApiError> {
            self.decode_encoded(body, None, None, header_len, usize::MAX)
                .await
        }
    }

    fn body(values: usize) -> Bytes {
        let data = vec!["0"; values].join(",");
        Bytes::from(format!(
            r#"{{"inputs":[{{"name":"x","shape":[{values}],"datatype":"FP32","data":[{data}]}}]}}"#
        ))
    }

    #[tokio::test]
    async fn small_and_big_bodies_decode_alike_and_refusals_keep_their_status() {
        let decoder = Decoder::new(1 << 20, Limits::within(1 << 20));
        for values in [4, 100_000] {
            let (request, tensors) = decoder.decode(body(values), None).await.expect("decoded");
            assert_eq!(request.inputs.len(), 1);
            assert!(request.inputs[0].data.is_none());
            assert_eq!(tensors[0].1.len(), values);
        }
        let bad = Bytes::from_static(
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
        );
        let e = decoder.decode(bad, None).await.expect_err("refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let decoder = Decoder::new(1 << 20, Limits::within(10));
        let e = decoder
            .decode(body(100_000), None)
            .await
            .expect_err("refused");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            decoder.permits.available_permits(),
            1024,
            "permits returned"
        );
    }

    #[tokio::test]
    async fn bodies_are_received_whole_and_refused_past_the_limit() {
        // (Bodies in many chunks: tests/json_memory.rs, 32 MiB each.)
        let decoder = Decoder::new(1 << 20, Limits::within(1 << 20));
        let body = Body::from("{\"inputs\": []}");
        let second = Duration::from_secs(1);
        let whole = decoder
            .receive(body, 64, second, false)
            .await
            .expect("whole");
        assert_eq!(&*whole.body, b"{\"inputs\": []}");
        assert!(whole.share.is_none(), "a small body takes no share");
        let e = decoder
            .receive(Body::from(vec![b' '; 65]), 64, second, false)
            .await
            .err()
            .expect("over");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{e:?}");
        // Declared over the limit: refused before any of it is read.
        let big = http_body_util::Full::new(Bytes::from(vec![b' '; 100]));
        let e = decoder
            .receive(Body::new(big), 64, second, false)
            .await
            .err()
            .expect("declared over");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{e:?}");
    }

    /// A chunked body (no declared size) of `chunks` pieces of `size` bytes, one every `gap`.
    fn trickled(chunks: usize, size: usize, gap: Duration) -> Body {
        let stream = futures::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from(vec![b' '; size])),
                i + 1,
            ))
        });
        Body::from_stream(stream)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_bodies_are_read_under_their_share_and_its_wait_is_not_the_clients() {
        let decoder = Arc::new(Decoder::new(1 << 20, Limits::within(1 << 20)));
        // The whole budget held elsewhere.
        let held = decoder.reserve(1 << 20).await.expect("budget");
        // A declared 128 KiB body waits for its share before any of it is read, and the wait
        // does not count against its 200 ms to arrive.
        let big = http_body_util::Full::new(Bytes::from(vec![b' '; 128 << 10]));
        let waiting = {
            let decoder = Arc::clone(&decoder);
            tokio::spawn(async move {
                decoder
                    .receive(Body::new(big), 1 << 20, Duration::from_millis(200), false)
                    .await
            })
        };
        // A chunked one takes a whole limit's share once it has sent INLINE_MAX_BYTES.
        let chunked = {
            let decoder = Arc::clone(&decoder);
            tokio::spawn(async move {
                let body = trickled(4, 32 << 10, Duration::from_millis(10));
                decoder
                    .receive(body, 512 << 10, Duration::from_millis(200), false)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished() && !chunked.is_finished(),
            "read without a share"
        );
        drop(held);
        let big = waiting
            .await
            .expect("task")
            .expect("received after the wait");
        assert_eq!(big.body.len(), 128 << 10);
        assert_eq!(
            big.share.as_ref().map(OwnedSemaphorePermit::num_permits),
            Some(128)
        );
        drop(big);
        let chunked = chunked
            .await
            .expect("task")
            .expect("received after the wait");
        assert_eq!(chunked.body.len(), 128 << 10);
        assert_eq!(
            chunked
                .share
                .as_ref()
                .map(OwnedSemaphorePermit::num_permits),
            Some(512)
        );
        // A compressed body's share has room for a whole limit more.
        let big = http_body_util::Full::new(Bytes::from(vec![b' '; 128 << 10]));
        let compressed = decoder
            .receive(Body::new(big), 256 << 10, Duration::from_secs(1), true)
            .await
            .expect("received");
        assert_eq!(
            compressed
                .share
                .as_ref()
                .map(OwnedSemaphorePermit::num_permits),
            Some(384)
        );
        // A body that stops arriving is refused at the timeout.
        let e = decoder
            .receive(
                trickled(2, 1, Duration::from_secs(5)),
                64,
                Duration::from_millis(100),
                false,
            )
            .await
            .err()
            .expect("timed out");
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT, "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compressed_bodies_decode_inline_or_off_the_workers_within_the_limit() {
        let decoder = Decoder::new(1 << 20, Limits::within(1 << 20));
        for values in [4, 100_000] {
            let packed = Coding::Gzip.compress(&body(values));
            assert!(packed.len() < INLINE_MAX_BYTES);
            let (_, tensors) = decoder
                .decode_encoded(packed, None, Some(Coding::Gzip), None, 1 << 20)
                .await
                .expect("decoded");
            assert_eq!(tensors[0].1.len(), values);
        }
        let packed = Coding::Deflate.compress(&body(100_000));
        let e = decoder
            .decode_encoded(packed, None, Some(Coding::Deflate), None, 100_000)
            .await
            .expect_err("past the limit");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = decoder
            .decode_encoded(body(4), None, Some(Coding::Gzip), None, 1 << 20)
            .await
            .expect_err("not gzip");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            decoder.permits.available_permits(),
            1024,
            "permits returned"
        );
    }

    #[tokio::test]
    async fn a_share_shrinks_to_what_an_inflated_body_holds_and_never_grows() {
        let decoder = Decoder::new(4 << 20, Limits::within(1 << 20));
        let mut share = decoder.reserve(2 << 20).await.expect("share");
        assert_eq!(decoder.permits.available_permits(), 2048);
        shrink(&mut share, 100 << 10);
        assert_eq!(share.num_permits(), 100);
        assert_eq!(decoder.permits.available_permits(), 4096 - 100);
        shrink(&mut share, 3 << 20);
        assert_eq!(share.num_permits(), 100, "a bigger size takes nothing more");
        shrink(&mut share, 0);
        assert_eq!(share.num_permits(), 0);
        drop(share);
        assert_eq!(decoder.permits.available_permits(), 4096);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gzip_body_holds_the_share_its_trailer_names_and_falls_back_when_it_understates() {
        // A 4 MiB budget, 2 MiB bodies, 3.5 MiB of it held by other requests: a whole body
        // limit's share would wait for them; the ~200 KB this body's gzip trailer names fits.
        let decoder = Decoder::new(4 << 20, Limits::within(1 << 20));
        let held = decoder.reserve((7 << 20) / 2).await.expect("held");
        let plain = body(100_000);
        let packed = Coding::Gzip.compress(&plain);
        assert!(packed.len() < INLINE_MAX_BYTES && plain.len() > INLINE_MAX_BYTES);
        let (_, tensors) = tokio::time::timeout(
            Duration::from_secs(10),
            decoder.decode_encoded(packed, None, Some(Coding::Gzip), None, 2 << 20),
        )
        .await
        .expect("waited for a whole body limit's share")
        .expect("decoded");
        assert_eq!(tensors[0].1.len(), 100_000);
        drop(held);
        // Two gzip members: the trailer names the last one's size only, so the first inflate
        // stops short and the body is inflated again under a whole share.
        let half = plain.len() / 2;
        let mut members = Coding::Gzip.compress(&plain[..half]);
        members.extend(Coding::Gzip.compress(&plain[half..]));
        let (_, tensors) = decoder
            .decode_encoded(members, None, Some(Coding::Gzip), None, 2 << 20)
            .await
            .expect("decoded");
        assert_eq!(tensors[0].1.len(), 100_000);
        // A trailer that overstates it is no reason to wait either: at most the limit.
        let mut over = Coding::Gzip.compress(&plain);
        let n = over.len();
        over[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decoder
            .decode_encoded(over, None, Some(Coding::Gzip), None, 2 << 20)
            .await
            .expect_err("a trailer that does not match is corrupt");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            decoder.permits.available_permits(),
            4096,
            "permits returned"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_over_the_whole_budget_still_decodes() {
        let decoder = Decoder::new(100 << 10, Limits::within(1 << 20));
        let (_, tensors) = decoder.decode(body(200_000), None).await.expect("decoded");
        assert_eq!(tensors[0].1.len(), 200_000);
    }
}
