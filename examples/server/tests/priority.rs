//! The request's `priority` parameter (Triton's schedule-policy parameter: what
//! `tritonclient`'s `infer(priority=…)` sends; 1 is the highest level, 0 the default) decides
//! the queue level of the real `kiln-server`: with the one instance busy, a low-priority
//! request queued first waits while a high-priority one queued after it runs. Sent as plain
//! JSON, then by Triton's own HTTP and gRPC clients (`triton_priority.py`).

mod common;

use std::time::{Duration, Instant};

use common::{free_ports, http, publish, run_checks, start_ready, venv_python};

/// A magika request of `rows` rows with `parameters`.
fn body(rows: usize, parameters: &str) -> String {
    let row: Vec<String> = (0..2048).map(|i| (i * 7 % 257).to_string()).collect();
    let data = vec![row.join(","); rows].join(",");
    format!(
        r#"{{"parameters": {parameters}, "inputs": [{{"name": "bytes", "shape": [{rows}, 2048], "datatype": "INT32", "data": [{data}]}}]}}"#
    )
}

#[test]
fn a_high_priority_request_overtakes_a_low_priority_one_queued_before_it() {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "magika", "1", "real/magika.onnx");
    // One instance, greedy batching, two priority levels (the default): requests of one
    // level batch together, levels never do.
    let settings = root.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "session: {intra_op_threads: 1}\nbatch: {instances: 1, max_batch_size: 256, priority_levels: 2}\n",
    )
    .expect("settings");
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let mut child = start_ready(
        root.path(),
        port,
        &[
            "--config",
            settings.to_str().expect("utf-8"),
            "--drain-delay-s",
            "0",
            "--grpc-listen",
            &grpc_listen,
        ],
    );
    let started = Instant::now();
    let send = |rows: usize, parameters: &'static str| {
        let body = body(rows, parameters);
        std::thread::spawn(move || {
            let (code, answer) =
                http(port, "POST", "/v2/models/magika/infer", &body).expect("answer");
            assert_eq!(code, 200, "{answer}");
            Instant::now()
        })
    };
    // The instance busy with a long batch; then, while it runs, 64 rows at priority 2 and,
    // after them, one row at priority 1.
    // (256 rows: over 2 s here, close to 1 s on cores three times faster; the two others are
    // queued within half a second, the blocker's 2 MiB of JSON decoded well before.)
    let blocker = send(256, "{}");
    std::thread::sleep(Duration::from_millis(400));
    let low = send(64, r#"{"priority": 2}"#);
    std::thread::sleep(Duration::from_millis(100));
    let high = send(1, r#"{"priority": 1}"#);
    let blocker = blocker.join().expect("blocker");
    let (low, high) = (low.join().expect("low"), high.join().expect("high"));
    let rest = format!("127.0.0.1:{port}");
    let clients = run_checks(
        &venv_python("venv", "testdata"),
        "triton_priority.py",
        &[&rest, &grpc_listen],
    );
    let _ = child.kill();
    let _ = child.wait();
    let at = |t: Instant| t.duration_since(started).as_millis();
    eprintln!(
        "done at: blocker {} ms, high {} ms, low {} ms",
        at(blocker),
        at(high),
        at(low)
    );
    // Ignoring the parameter, the two would share the batch after the blocker and finish
    // together; honoured, the one row runs alone first and the 64 rows after it.
    assert!(
        high + Duration::from_millis(50) < low,
        "the priority-1 request did not run before the priority-2 one queued before it \
         (blocker {} ms, high {} ms, low {} ms)",
        at(blocker),
        at(high),
        at(low)
    );
    let (passed, text) = clients;
    assert!(passed, "tritonclient's priority was not honoured:\n{text}");
}
