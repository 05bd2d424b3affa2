//! How a large object travels (`transfer: auto|ranged|stream`), against loopback HTTP stores
//! that behave like the real ones measured in `benches/RESULTS.md`: one whose range GETs pay a
//! large start-up each (as moto's do) is read as one stream; one that limits each connection's
//! rate (so parallel ranges add up, as against `s3s-fs`) is read in ranged parts; a stream cut
//! mid-way resumes from its journal with one GET from the first missing part.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, Method, StatusCode};
use common::{agent_with_metrics, rt, serve};
use kiln::Digest;

/// How the test store behaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Waited before every ranged answer starts.
    range_delay: Duration,
    /// Each answer's body is sent in 8 KiB chunks this far apart (a per-connection rate).
    chunk_gap: Duration,
    /// The first GET's body stops (connection reset) after this many bytes, and the store
    /// answers 503 to everything until `Store::revive`.
    cut_first_after: Option<usize>,
}

/// An HTTP object store on loopback serving one object with byte ranges and an ETag; records
/// every GET's `Range` header (`-` for none).
fn store(
    server_rt: &tokio::runtime::Runtime,
    body: Arc<Vec<u8>>,
    how: Behaviour,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<String>>>,
    Arc<AtomicBool>,
) {
    let gets = Arc::new(Mutex::new(Vec::<String>::new()));
    let dead = Arc::new(AtomicBool::new(false));
    let (seen, down) = (Arc::clone(&gets), Arc::clone(&dead));
    let handler = move |method: Method, headers: HeaderMap| {
        let (body, seen, down) = (Arc::clone(&body), Arc::clone(&seen), Arc::clone(&down));
        async move {
            if down.load(Ordering::SeqCst) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    HeaderMap::new(),
                    axum::body::Body::empty(),
                );
            }
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, "\"v1\"".parse().expect("etag"));
            h.insert(
                header::LAST_MODIFIED,
                "Sun, 22 Nov 2026 12:00:00 GMT".parse().expect("date"),
            );
            if method == Method::HEAD {
                h.insert(header::CONTENT_LENGTH, body.len().into());
                return (StatusCode::OK, h, axum::body::Body::empty());
            }
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let first = {
                let mut g = seen.lock().expect("gets");
                g.push(range.clone().unwrap_or_else(|| "-".into()));
                g.len() == 1
            };
            let (a, b) = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .unwrap_or((0, body.len() - 1));
            let b = b.min(body.len() - 1);
            let status = if range.is_some() {
                tokio::time::sleep(how.range_delay).await;
                h.insert(
                    header::CONTENT_RANGE,
                    format!("bytes {a}-{b}/{}", body.len())
                        .parse()
                        .expect("range"),
                );
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            };
            h.insert(header::CONTENT_LENGTH, (b + 1 - a).into());
            let cut = how.cut_first_after.filter(|_| first);
            let down = Arc::clone(&down);
            let data = body[a..=b].to_vec();
            let chunks = futures::stream::unfold(0usize, move |at| {
                let (data, down) = (data.clone(), Arc::clone(&down));
                async move {
                    if at >= data.len() {
                        return None;
                    }
                    if cut.is_some_and(|c| at >= c) {
                        down.store(true, Ordering::SeqCst);
                        return Some((Err(std::io::Error::other("the store died")), usize::MAX));
                    }
                    if !how.chunk_gap.is_zero() {
                        tokio::time::sleep(how.chunk_gap).await;
                    }
                    let end = (at + 8192).min(data.len());
                    Some((Ok(bytes::Bytes::copy_from_slice(&data[at..end])), end))
                }
            });
            (status, h, axum::body::Body::from_stream(chunks))
        }
    };
    let app = axum::Router::new().route(
        "/files/model.bin",
        axum::routing::get(handler.clone()).head(handler),
    );
    (serve(server_rt, app), gets, dead)
}

/// 12 parts of 64 KiB plus a short last one.
fn object() -> Vec<u8> {
    (0..12 * 65_536 + 777)
        .map(|i: usize| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

fn yaml(root: &std::path::Path, addr: std::net::SocketAddr, body: &[u8], extra: &str) -> String {
    format!(
        "root: {}\nreserve_bytes: 0\nparallel_threshold_mib: 0\npart_size_kib: 64\nparallelism: 4\n{extra}retry: {{max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 2}}\nmodels:\n  - name: m\n    version: \"1\"\n    source: http://{addr}/files/model.bin\n    sha256: {}\n    store: {{allow_http: \"true\"}}\n",
        root.display(),
        Digest::of(body)
    )
}

/// One sync of [`object`] from a store behaving as `how`, with `transfer: auto`: checks what
/// is published and returns the choice, the GETs' ranges and the metrics text.
fn auto_sync(how: Behaviour) -> (kiln_agent::transfer::TransferChoice, Vec<String>, String) {
    let body = object();
    let server_rt = rt();
    let (addr, gets, _) = store(&server_rt, Arc::new(body.clone()), how);
    let root = tempfile::tempdir().expect("root");
    let (agent, telemetry) = agent_with_metrics(&yaml(root.path(), addr, &body, ""));
    let r = rt().block_on(agent.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert_eq!(
        std::fs::read(root.path().join("m/1/model.bin")).expect("published"),
        body
    );
    assert!(common::leftovers(root.path()).is_empty());
    let choice = agent.status().lock().expect("status")["m"]
        .transfer
        .clone()
        .expect("a choice");
    assert!(choice.reason.starts_with("measured"), "{choice:?}");
    let gets = gets.lock().expect("gets").clone();
    (choice, gets, telemetry.render())
}

#[test]
fn a_store_with_slow_range_gets_is_read_as_one_stream() {
    let (choice, gets, text) = auto_sync(Behaviour {
        // Far past what one stream needs for four 64 KiB parts, even on a loaded machine.
        range_delay: Duration::from_secs(2),
        ..Behaviour::default()
    });
    assert_eq!(
        choice.mode,
        kiln_agent::transfer::Mode::Stream,
        "{choice:?}"
    );
    assert!(
        choice.stream_bytes_per_second > choice.ranged_bytes_per_second,
        "{choice:?}"
    );
    // One plain GET of the whole object, streamed; the scout's ranged GET of part 7 was
    // started and stopped (each ranged answer waits 2 s, far past what one stream needs; it
    // may be stopped before the store even sees it), the four parallel ones were never sent,
    // and the stream went on to the end (the short last part is left out of any probe: it
    // would make ranged parts look slow).
    assert_eq!(
        choice.reason, "measured; ranged parts stopped early, slower than one stream",
        "{choice:?}"
    );
    assert_eq!(gets[0], "-", "a plain GET first: {gets:?}");
    let scout = format!("bytes={}-{}", 7 * 65_536, 8 * 65_536 - 1);
    assert!(
        gets[1..].iter().all(|g| *g == scout),
        "no other GET: {gets:?}"
    );
    assert!(gets.len() <= 2, "{gets:?}");
    for mode in ["stream", "ranged"] {
        assert!(
            text.contains(&format!(
                "kiln_agent_transfer_throughput_bytes_per_second{{mode=\"{mode}\",model=\"m\"}}"
            )),
            "{text}"
        );
    }
}

#[test]
fn a_store_that_limits_each_connection_is_read_in_ranged_parts() {
    let (choice, gets, _) = auto_sync(Behaviour {
        // About 8 KiB per 10 ms per connection: four connections move four times that.
        chunk_gap: Duration::from_millis(10),
        ..Behaviour::default()
    });
    assert_eq!(
        choice.mode,
        kiln_agent::transfer::Mode::Ranged,
        "{choice:?}"
    );
    // The stream (a plain GET, abandoned after its first two parts), the scout and the four
    // probed parts, then the six parts left, one GET each (a GET the client retried on its
    // own may come twice).
    let size = 12 * 65_536 + 777;
    assert_eq!(gets[0], "-", "{gets:?}");
    let mut parts: Vec<&String> = gets[1..].iter().collect();
    parts.sort();
    parts.dedup();
    let expected: Vec<String> = (2..13)
        .map(|p| format!("bytes={}-{}", p * 65_536, ((p + 1) * 65_536).min(size) - 1))
        .collect();
    let mut expected: Vec<&String> = expected.iter().collect();
    expected.sort();
    assert_eq!(parts, expected, "each other part once, by one ranged GET");
}

#[test]
fn a_stream_cut_mid_way_resumes_with_one_get_from_the_first_missing_part() {
    let body = object();
    let server_rt = rt();
    let (addr, gets, dead) = store(
        &server_rt,
        Arc::new(body.clone()),
        Behaviour {
            cut_first_after: Some(3 * 65_536 + 1000),
            ..Behaviour::default()
        },
    );
    let root = tempfile::tempdir().expect("root");
    let config = yaml(root.path(), addr, &body, "transfer: stream\n")
        .replace("max_attempts: 2", "max_attempts: 1");
    let (first, _t) = agent_with_metrics(&config);
    let r = rt().block_on(first.sync_once());
    assert!(r[0].1.is_err(), "the store died: {:?}", r[0].1);
    let journal = std::fs::read_to_string(
        root.path()
            .join(".kiln/parts/m/1/model.bin.partial.journal"),
    )
    .expect("journal kept");
    // The bytes before the cut, in whole parts (a reset connection may lose the last few
    // bytes sent before it, so at least the first two parts of three).
    let done: Vec<u64> = journal
        .lines()
        .skip(1)
        .map(|l| l.parse().expect("index"))
        .collect();
    assert!(done.len() >= 2 && done.len() <= 3, "{journal}");
    assert_eq!(
        done,
        (0..done.len() as u64).collect::<Vec<_>>(),
        "{journal}"
    );
    let resume_at = done.len() * 65_536;

    // The store comes back; a restarted agent asks once, from the first missing part to the end.
    dead.store(false, Ordering::SeqCst);
    let (second, telemetry) = agent_with_metrics(&config);
    let r = rt().block_on(second.sync_once());
    assert!(r[0].1.is_ok(), "{:?}", r[0].1);
    assert_eq!(
        std::fs::read(root.path().join("m/1/model.bin")).expect("published"),
        body
    );
    let gets = gets.lock().expect("gets").clone();
    assert_eq!(
        gets,
        [
            "-".to_owned(),
            format!("bytes={resume_at}-{}", body.len() - 1)
        ]
    );
    let choice = second.status().lock().expect("status")["m"]
        .transfer
        .clone()
        .expect("configured");
    assert_eq!(
        (choice.mode, choice.reason),
        (kiln_agent::transfer::Mode::Stream, "configured")
    );
    assert!(telemetry.render().contains(&format!(
        "kiln_agent_downloaded_bytes_total{{model=\"m\"}} {}",
        body.len() - resume_at
    )));
    assert!(common::leftovers(root.path()).is_empty());
}
