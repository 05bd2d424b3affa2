//! The dynamic batcher against a fake backend: every scheduling guarantee, checked where the
//! outcome is deterministic (gates instead of sleeps; timings asserted only as lower bounds).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fake::{assert_own_rows, metadata, request, Fake, Gate, Seen};
use kiln::batch::{Backend, BatchConfig, BatcherSpec, InferRequest, ModelHandle, ModelState};
use kiln::Error;
use proptest::prelude::*;

fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter("kiln-tests")
}

fn spec(config: BatchConfig, batch_dim: bool) -> BatcherSpec {
    BatcherSpec {
        model: "fake".into(),
        version: "1".into(),
        metadata: metadata(batch_dim),
        max_input_elements: 1 << 20,
        config,
    }
}

/// Serves `spec` on `backends` through a model handle (the one public way in).
fn serve(spec: BatcherSpec, backends: Vec<Box<dyn Backend>>) -> ModelHandle {
    let handle = ModelHandle::new(spec.model.clone(), meter());
    handle
        .load_with("1", move || Ok((spec, backends, "fake".into())))
        .expect("batcher starts");
    handle
}

fn start(config: BatchConfig, seen: &Seen, gate: Option<Arc<Gate>>) -> ModelHandle {
    let backends = (0..config.instances)
        .map(|_| {
            Box::new(Fake {
                gate: gate.clone(),
                ..Fake::new(seen)
            }) as Box<dyn Backend>
        })
        .collect();
    serve(spec(config, true), backends)
}

fn no_warmup(c: BatchConfig) -> BatchConfig {
    BatchConfig { warmup: false, ..c }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Concurrent callers with random sizes, widths (shape buckets) and priorities under random
    /// configs: every caller gets exactly its own rows, no batch exceeds max rows or mixes
    /// buckets, and every request is answered once.
    #[test]
    fn concurrent_callers_each_get_exactly_their_rows(
        reqs in proptest::collection::vec((1usize..=4, 1usize..=3, 0usize..2), 1..80),
        max_batch in 4usize..=16,
        instances in 1usize..=3,
        delay_us in prop_oneof![Just(0u64), Just(300u64)],
    ) {
        let seen: Seen = Arc::default();
        let cfg = no_warmup(BatchConfig { instances, max_batch_size: max_batch, max_queue_delay_us: delay_us, preferred_batch_sizes: vec![4], ..BatchConfig::default() });
        let b = Arc::new(start(cfg, &seen, None));
        let results = rt().block_on(async {
            let tasks: Vec<_> = reqs.iter().enumerate().map(|(i, &(rows, width, prio))| {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    let out = b.infer(InferRequest::new(request(i as i64, rows, width)).with_priority(prio)).await;
                    (i, rows, width, out)
                })
            }).collect();
            let mut out = Vec::new();
            for t in tasks { out.push(t.await.expect("task")); }
            out
        });
        for (i, rows, width, out) in results {
            let out = out.expect("every request succeeds");
            assert_own_rows(&out, i as i64, rows, width);
        }
        let batches = seen.lock().expect("seen").clone();
        let mut all: Vec<i64> = batches.iter().flatten().copied().collect();
        for batch in &batches { prop_assert!(batch.len() <= max_batch); }
        all.sort_unstable();
        all.dedup();
        prop_assert_eq!(all.len(), reqs.len(), "each request ran exactly once");
        let stats = b.stats().expect("serving");
        prop_assert_eq!(stats.succeeded as usize, reqs.len());
        prop_assert_eq!(stats.queued, 0);
    }
}

#[test]
fn deadline_fires_while_every_instance_is_busy_and_never_reaches_the_model() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let b = Arc::new(start(
        no_warmup(BatchConfig::default()),
        &seen,
        Some(gate.clone()),
    ));
    rt().block_on(async {
        let busy = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.infer(InferRequest::new(request(1, 1, 2))).await }
        });
        gate.wait_inside(1);
        // The only instance is held at the gate; this request can only be failed by the timer.
        let late = b
            .infer(InferRequest::new(request(2, 1, 2)).with_timeout(Duration::from_millis(20)))
            .await;
        assert!(
            matches!(late, Err(Error::DeadlineExceeded { .. })),
            "{late:?}"
        );
        gate.open();
        assert_own_rows(&busy.await.expect("task").expect("busy request"), 1, 1, 2);
    });
    assert!(
        seen.lock()
            .expect("seen")
            .iter()
            .flatten()
            .all(|&id| id != 2),
        "expired request reached the model"
    );
    assert_eq!(b.stats().expect("serving").expired, 1);
}

#[test]
fn default_timeout_applies_and_a_request_may_only_shorten_it() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let cfg = no_warmup(BatchConfig {
        default_timeout_ms: 30,
        ..BatchConfig::default()
    });
    let b = Arc::new(start(cfg, &seen, Some(gate.clone())));
    rt().block_on(async {
        let first = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.infer(InferRequest::new(request(1, 1, 2))).await }
        });
        gate.wait_inside(1);
        // Asks for an hour; the model's 30 ms default still applies.
        let r = b
            .infer(InferRequest::new(request(2, 1, 2)).with_timeout(Duration::from_secs(3600)))
            .await;
        assert!(matches!(r, Err(Error::DeadlineExceeded { .. })), "{r:?}");
        gate.open();
        let _ = first.await;
    });
}

#[test]
fn a_full_queue_is_overloaded_at_once_with_a_retry_hint() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let cfg = no_warmup(BatchConfig {
        max_queue_requests: 3,
        max_batch_size: 1,
        ..BatchConfig::default()
    });
    let b = start(cfg, &seen, Some(gate.clone()));
    let running = b
        .submit(InferRequest::new(request(0, 1, 2)))
        .expect("admitted");
    gate.wait_inside(1);
    let queued: Vec<_> = (1..=3)
        .map(|i| b.submit(InferRequest::new(request(i, 1, 2))).expect("fits"))
        .collect();
    match b.submit(InferRequest::new(request(9, 1, 2))) {
        Err(Error::Overloaded {
            queued_requests: 3,
            retry_after,
            ..
        }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    gate.open();
    assert_own_rows(
        &running.blocking_recv().expect("reply").expect("ok"),
        0,
        1,
        2,
    );
    for (i, rx) in queued.into_iter().enumerate() {
        assert_own_rows(
            &rx.blocking_recv().expect("reply").expect("ok"),
            i as i64 + 1,
            1,
            2,
        );
    }
    assert_eq!(b.stats().expect("serving").overloaded, 1);
}

#[test]
fn thousands_of_cancellations_under_load_never_wedge_the_scheduler() {
    let seen: Seen = Arc::default();
    let cfg = no_warmup(BatchConfig {
        instances: 2,
        max_batch_size: 8,
        max_queue_requests: 10_000,
        ..BatchConfig::default()
    });
    let b = Arc::new(serve(
        spec(cfg, true),
        (0..2)
            .map(|_| {
                Box::new(Fake {
                    delay: Duration::from_micros(200),
                    ..Fake::new(&seen)
                }) as Box<dyn Backend>
            })
            .collect(),
    ));
    rt().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..5000i64 {
            let b = Arc::clone(&b);
            tasks.push(tokio::spawn(async move {
                let fut = b.infer(InferRequest::new(request(i, 1, 2)));
                if i % 5 == 0 {
                    // One in five runs to completion; the rest are dropped mid-flight.
                    fut.await.map(|_| ())
                } else {
                    let _ =
                        tokio::time::timeout(Duration::from_micros((i % 7) as u64 * 50), fut).await;
                    Ok(())
                }
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("completed requests succeed");
        }
        // Not wedged: a fresh request still gets through.
        let out = b
            .infer(InferRequest::new(request(77_777, 2, 2)))
            .await
            .expect("after the storm");
        assert_own_rows(&out, 77_777, 2, 2);
    });
    let stats = b.stats().expect("serving");
    assert!(stats.cancelled > 0, "{stats:?}");
    assert_eq!(stats.queued, 0);
    assert_eq!(
        stats.succeeded + stats.failed + stats.cancelled + stats.expired,
        5001,
        "every request accounted for: {stats:?}"
    );
}

#[test]
fn a_bad_request_fails_alone_not_its_batch_neighbours() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let b = start(no_warmup(BatchConfig::default()), &seen, Some(gate.clone()));
    let blocker = b
        .submit(InferRequest::new(request(0, 1, 2)))
        .expect("admitted");
    gate.wait_inside(1);
    let ids = [1, -5, 2, -999, 3];
    let rxs: Vec<_> = ids
        .iter()
        .map(|&i| {
            b.submit(InferRequest::new(request(i, 1, 2)))
                .expect("admitted")
        })
        .collect();
    gate.open();
    blocker.blocking_recv().expect("reply").expect("ok");
    for (&id, rx) in ids.iter().zip(rxs) {
        let r = rx.blocking_recv().expect("reply");
        match id {
            -5 => assert!(
                matches!(&r, Err(Error::InvalidConfig { reason, .. }) if reason == "poisoned row"),
                "{r:?}"
            ),
            -999 => assert!(
                matches!(&r, Err(Error::WorkerLost { reason, .. }) if reason.contains("panicked")),
                "{r:?}"
            ),
            _ => assert_own_rows(&r.expect("neighbour succeeds"), id, 1, 2),
        }
    }
    // The instance survived the panic.
    assert_own_rows(
        &b.infer_blocking(InferRequest::new(request(4, 1, 2)))
            .expect("still serving"),
        4,
        1,
        2,
    );
    let batches = seen.lock().expect("seen").clone();
    assert!(
        batches.iter().any(|batch| batch.len() == 5),
        "the five ran as one batch first: {batches:?}"
    );
}

#[test]
fn low_priority_gets_a_bounded_share_while_high_priority_floods() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let cfg = no_warmup(BatchConfig {
        max_batch_size: 1,
        low_priority_share: 0.25,
        ..BatchConfig::default()
    });
    let b = start(cfg, &seen, Some(gate.clone()));
    let first = b
        .submit(InferRequest::new(request(0, 1, 2)))
        .expect("admitted");
    gate.wait_inside(1);
    let mut rxs = Vec::new();
    for i in 1..=20 {
        rxs.push(
            b.submit(InferRequest::new(request(1000 + i, 1, 2)).with_priority(1))
                .expect("low"),
        );
        rxs.push(
            b.submit(InferRequest::new(request(i, 1, 2)).with_priority(0))
                .expect("high"),
        );
    }
    gate.open();
    first.blocking_recv().expect("reply").expect("ok");
    for rx in rxs {
        rx.blocking_recv().expect("reply").expect("ok");
    }
    let order: Vec<i64> = seen
        .lock()
        .expect("seen")
        .iter()
        .skip(1)
        .map(|b| b[0])
        .collect();
    let low_in_first_20 = order[..20].iter().filter(|&&id| id > 1000).count();
    assert!(
        low_in_first_20 >= 4,
        "low priority got {low_in_first_20} of the first 20 batches: {order:?}"
    );
    assert!(
        low_in_first_20 <= 6,
        "high priority must still dominate: {order:?}"
    );
}

#[test]
fn a_model_without_a_batch_dimension_runs_one_request_at_a_time() {
    let seen: Seen = Arc::default();
    let b = serve(
        spec(no_warmup(BatchConfig::default()), false),
        vec![Box::new(Fake::new(&seen))],
    );
    rt().block_on(async {
        let b = &b;
        let futs: Vec<_> = (0..10)
            .map(|i| async move { b.infer(InferRequest::new(request(i, 1, 3))).await })
            .collect();
        for (i, r) in futures_join(futs).await.into_iter().enumerate() {
            assert_own_rows(&r.expect("ok"), i as i64, 1, 3);
        }
    });
    assert!(seen
        .lock()
        .expect("seen")
        .iter()
        .all(|batch| batch.len() == 1));
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

#[test]
fn bad_requests_are_refused_at_admission_with_typed_errors() {
    let seen: Seen = Arc::default();
    let cfg = no_warmup(BatchConfig {
        max_batch_size: 4,
        max_queue_bytes: 1024,
        ..BatchConfig::default()
    });
    let b = start(cfg, &seen, None);
    let err = |r: kiln::Result<_>| r.map(|_| ()).expect_err("must be refused");
    assert!(matches!(
        err(b.infer_blocking(InferRequest::new(request(1, 5, 1)))),
        Error::BatchTooLarge {
            rows: 5,
            max: 4,
            ..
        }
    ));
    assert!(matches!(
        err(b.infer_blocking(InferRequest::new(request(1, 2, 100)))),
        Error::RequestTooLarge { .. }
    ));
    assert!(matches!(
        err(b.infer_blocking(InferRequest::new(request(1, 1, 1)).with_priority(7))),
        Error::InvalidPriority { .. }
    ));
    let wrong = vec![(
        "x".to_owned(),
        kiln::Tensor::new([1, 1], vec![1f32]).expect("f32"),
    )];
    assert!(matches!(
        err(b.infer_blocking(InferRequest::new(wrong))),
        Error::DtypeMismatch { .. }
    ));
    assert!(
        seen.lock().expect("seen").is_empty(),
        "nothing refused reached the model"
    );
}

#[test]
fn warmup_runs_every_preferred_size_and_max_on_every_instance_before_ready() {
    let seen: Seen = Arc::default();
    let cfg = BatchConfig {
        instances: 2,
        max_batch_size: 8,
        preferred_batch_sizes: vec![2, 4],
        ..BatchConfig::default()
    };
    let _b = start(cfg, &seen, None);
    let mut sizes: Vec<usize> = seen.lock().expect("seen").iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2, 2, 4, 4, 8, 8]);
}

fn fake_loader(
    seen: &Seen,
    instances: usize,
    fail: bool,
) -> impl FnOnce() -> kiln::Result<kiln::batch::Loaded> {
    let seen = Arc::clone(seen);
    move || {
        if fail {
            return Err(Error::InvalidConfig {
                field: "fake",
                reason: "version refuses to load".into(),
            });
        }
        let cfg = BatchConfig {
            instances,
            max_batch_size: 8,
            ..BatchConfig::default()
        };
        let backends = (0..instances)
            .map(|_| Box::new(Fake::new(&seen)) as Box<dyn Backend>)
            .collect();
        Ok((spec(cfg, true), backends, "fake".into()))
    }
}

#[test]
fn hot_swaps_under_load_fail_no_request_and_a_bad_version_leaves_the_old_serving() {
    let seen: Seen = Arc::default();
    let handle = ModelHandle::new("fake", meter());
    let states = handle.watch();
    assert_eq!(handle.status().state, ModelState::Loading);
    handle
        .load_with("1", fake_loader(&seen, 2, false))
        .expect("v1");
    assert!(handle.is_ready());
    assert!(states.has_changed().expect("watch"));

    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let (h, failures, done) = (handle.clone(), Arc::clone(&failures), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut n = 0i64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                    let id = t * 1_000_000 + n;
                    match h.infer_blocking(InferRequest::new(request(id, 1, 2))) {
                        Ok(out) => assert_own_rows(&out, id, 1, 2),
                        Err(e) => failures.lock().expect("failures").push(e.to_string()),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for v in 2..=6 {
        handle
            .load_with(&v.to_string(), fake_loader(&seen, 2, false))
            .expect("swap");
        assert_eq!(
            handle.current_version().as_deref(),
            Some(v.to_string().as_str())
        );
    }
    let err = handle
        .load_with("bad", fake_loader(&seen, 1, true))
        .expect_err("bad version");
    assert!(err.to_string().contains("refuses to load"));
    assert_eq!(
        handle.current_version().as_deref(),
        Some("6"),
        "the old version keeps serving"
    );
    assert!(handle
        .status()
        .last_error
        .is_some_and(|e| e.contains("refuses")));
    assert!(handle.is_ready());
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: i64 = callers.into_iter().map(|c| c.join().expect("caller")).sum();
    assert!(
        failures.lock().expect("failures").is_empty(),
        "{} of {total} failed: {:?}",
        failures.lock().expect("f").len(),
        failures.lock().expect("f").first()
    );

    handle.shutdown();
    assert_eq!(handle.status().state, ModelState::Unloaded);
    assert!(matches!(
        handle.infer_blocking(InferRequest::new(request(1, 1, 2))),
        Err(Error::Unavailable { .. })
    ));
}

#[test]
fn a_first_version_that_fails_to_load_reports_failed() {
    let seen: Seen = Arc::default();
    let handle = ModelHandle::new("fake", meter());
    assert!(handle.load_with("1", fake_loader(&seen, 1, true)).is_err());
    assert!(
        matches!(handle.status().state, ModelState::Failed { reason } if reason.contains("refuses"))
    );
}

#[test]
fn idle_instances_split_the_queue_and_run_in_parallel() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let cfg = no_warmup(BatchConfig {
        instances: 2,
        max_batch_size: 1,
        ..BatchConfig::default()
    });
    let b = start(cfg, &seen, Some(gate.clone()));
    let rxs: Vec<_> = (0..2)
        .map(|i| {
            b.submit(InferRequest::new(request(i, 1, 2)))
                .expect("admitted")
        })
        .collect();
    let parallel = gate.wait_inside_for(2, Duration::from_secs(10));
    gate.open();
    for rx in rxs {
        rx.blocking_recv().expect("reply").expect("ok");
    }
    assert!(
        parallel,
        "the second instance never picked up the second request while the first was busy"
    );

    // With both idle, a queue of 8 rows is split 4 + 4 rather than 8 + 0.
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let cfg = no_warmup(BatchConfig {
        instances: 2,
        max_batch_size: 8,
        ..BatchConfig::default()
    });
    let b = start(cfg, &seen, Some(gate.clone()));
    let blockers: Vec<_> = (0..2)
        .map(|i| {
            b.submit(InferRequest::new(request(100 + i, 1, 2)))
                .expect("admitted")
        })
        .collect();
    gate.wait_inside(2);
    let rxs: Vec<_> = (0..8)
        .map(|i| {
            b.submit(InferRequest::new(request(i, 1, 2)))
                .expect("admitted")
        })
        .collect();
    gate.open();
    for rx in blockers.into_iter().chain(rxs) {
        rx.blocking_recv().expect("reply").expect("ok");
    }
    assert_eq!(b.stats().expect("serving").succeeded, 10);
}

#[test]
fn an_answer_names_the_version_that_ran_it_and_an_asked_for_version_is_checked_when_queued() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    // Version 1 holds its request at the gate while version 2 is swapped in.
    let handle = start(no_warmup(BatchConfig::default()), &seen, Some(gate.clone()));
    rt().block_on(async {
        let held = tokio::spawn({
            let h = handle.clone();
            async move {
                h.infer_at(InferRequest::new(request(1, 1, 2)), Some("1"))
                    .await
            }
        });
        gate.wait_inside(1);
        let swapping = std::thread::spawn({
            let (h, seen) = (handle.clone(), Arc::clone(&seen));
            move || h.load_with("2", fake_loader(&seen, 1, false))
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handle.current_version().as_deref() != Some("2") {
            assert!(
                std::time::Instant::now() < deadline,
                "the swap never happened"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Asked for version 1 after the swap: refused, not run by version 2.
        let refused = handle
            .infer_at(InferRequest::new(request(2, 1, 2)), Some("1"))
            .await;
        assert!(
            matches!(&refused, Err(Error::VersionNotServing { version, serving, .. })
                if version == "1" && serving.as_deref() == Some("2")),
            "{refused:?}"
        );
        // The held request is answered by the version that ran it, though 2 now serves.
        gate.open();
        let answered = held.await.expect("task").expect("answered");
        assert_eq!(&*answered.version, "1");
        assert_own_rows(&answered.outputs, 1, 1, 2);
        swapping.join().expect("swap thread").expect("v2 loads");
        let now = handle
            .infer_at(InferRequest::new(request(3, 1, 2)), None)
            .await
            .expect("v2 answers");
        assert_eq!(&*now.version, "2");
        assert!(now.metadata.batch_dim);
    });
}

/// What Triton's statistics divide by their counts (`kiln-server`'s `/stats`): each succeeded
/// request timed from the queue to its outputs, as its wait plus its batch's run; a failed one
/// timed too; batches timed per size; when the model last answered. Lower bounds only: the
/// fake takes 10 ms a run.
#[test]
fn requests_and_batches_are_timed_for_tritons_statistics() {
    let seen: Seen = Arc::default();
    let gate = Gate::closed();
    let backend = Fake {
        gate: Some(gate.clone()),
        delay: Duration::from_millis(10),
        ..Fake::new(&seen)
    };
    let b = serve(
        spec(no_warmup(BatchConfig::default()), true),
        vec![Box::new(backend)],
    );
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    let before = now_ms();
    let infer = |id: i64| {
        b.submit(InferRequest::new(request(id, 1, 2)))
            .expect("admitted")
    };
    let first = infer(1);
    gate.wait_inside(1);
    // Three more wait out the first run in the queue; the poisoned one then fails alone.
    let rest: Vec<_> = [2, 3, -1].into_iter().map(infer).collect();
    gate.open();
    assert!(first.blocking_recv().expect("reply").is_ok());
    let outcomes: Vec<bool> = rest
        .into_iter()
        .map(|rx| rx.blocking_recv().expect("reply").is_ok())
        .collect();
    assert_eq!(outcomes, [true, true, false]);
    let after = now_ms();
    let st = b.stats().expect("serving");
    let ms = 1_000_000;
    assert_eq!((st.succeeded, st.failed), (3, 1), "{st:?}");
    assert_eq!((st.succeeded_rows, st.rows), (3, 4), "{st:?}");
    assert_eq!(st.queue_ns + st.compute_ns, st.success_ns, "{st:?}");
    assert!(
        st.compute_ns >= 3 * 10 * ms,
        "each success counts its batch's run: {st:?}"
    );
    assert!(
        st.queue_ns >= 2 * 10 * ms,
        "two waited out the first run: {st:?}"
    );
    assert!(st.fail_ns >= 10 * ms, "the failed request is timed: {st:?}");
    assert_eq!(st.batch_ns.len(), st.batch_sizes.len(), "{st:?}");
    for (&n, &ns) in st.batch_sizes.iter().zip(&st.batch_ns) {
        assert_eq!(n == 0, ns == 0, "a size run is timed: {st:?}");
    }
    assert!(
        st.batch_ns.iter().sum::<u64>() >= st.batches * 10 * ms,
        "{st:?}"
    );
    assert!(
        (before..=after).contains(&st.last_inference_ms),
        "{before} {} {after}",
        st.last_inference_ms
    );
}
