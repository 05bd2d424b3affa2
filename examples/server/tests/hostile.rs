//! Hostile clients against the real `kiln-server` binary over TCP: slowloris headers, trickled
//! and oversized bodies, shapes that lie about their data, pathological JSON. Each gets a
//! clear 4xx (or its connection closed) while well-behaved clients keep being served, and the
//! server's peak memory stays bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{free_port, free_ports, http, ort_env, proc_status_mib, publish, start_ready, Server};

fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    start_on(free_port(), extra)
}

/// [`start`] on `port`.
fn start_on(port: u16, extra: &[&str]) -> (tempfile::TempDir, Server) {
    let root = tempfile::tempdir().expect("root");
    publish(root.path(), "mlp", "1", "mlp.onnx");
    let mut args = vec!["--drain-delay-s", "0", "--max-body-mib", "1"];
    args.extend(extra);
    let child = start_ready(root.path(), port, &args);
    let server = Server { child, port };
    (root, server)
}

fn good_request(port: u16) {
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": vec![0.5; 16]}]}).to_string();
    let (code, out) = http(port, "POST", "/v2/models/mlp/infer", &body).expect("infer");
    assert_eq!(code, 200, "{out}");
}

/// Sends `head` (and `body`) raw; returns what the server answered before closing, or
/// `None` if it kept the connection open without answering for `wait`.
fn raw(port: u16, head: &str, body: &[u8], wait: Duration) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // A complete answer is enough; the server may keep the connection.
                let text = String::from_utf8_lossy(&out);
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        return Some(text.into_owned());
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_clients_are_cut_off_and_others_are_served_meanwhile() {
    let (_root, server) = start(&["--header-timeout-s", "1", "--body-timeout-s", "1"]);
    let port = server.port;
    // 64 slowloris connections: half a request line and headers, then silence.
    let lorises: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("write");
            s
        })
        .collect();
    good_request(port);
    // Each is closed by the server (EOF or a 408) well within 10x the 1 s header timeout.
    for mut s in lorises {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        let closed = s.read_to_end(&mut buf).is_ok();
        assert!(closed, "a slowloris connection was held open");
    }
    // A body that trickles: headers complete, 10 of 1000 bytes, then silence → 408.
    let head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    let answer = raw(port, head, b"{\"inputs\":", Duration::from_secs(10)).expect("answered");
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    // The same on the repository index, whose body was read with no time limit at all (and
    // refused over the limit in plain text, not JSON).
    let head = "POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
    let answer = raw(port, head, b"{\"ready\":", Duration::from_secs(10))
        .expect("the index's trickled body answered");
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    let over = vec![b' '; (1 << 20) + 1];
    let head = format!(
        "POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        over.len()
    );
    let answer = raw(port, &head, &over, Duration::from_secs(10)).expect("answered");
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    good_request(port);
}

/// Connections that send nothing, or a few bytes of the HTTP/2 preface and then nothing, on
/// the REST and the gRPC port alike: each is closed within the header timeout (a silent
/// connection used to be held for ever, waiting to tell HTTP/1 from HTTP/2).
#[test]
fn silent_and_trickling_connections_are_closed_on_both_ports() {
    let [port, grpc] = free_ports();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let (_root, server) = start_on(
        port,
        &["--header-timeout-s", "1", "--grpc-listen", &grpc_listen],
    );
    let mut held = Vec::new();
    for port in [server.port, grpc] {
        for opening in [&b""[..], b"PRI * HTT"] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(opening).expect("write");
            held.push((port, opening.len(), s, std::time::Instant::now()));
        }
    }
    good_request(server.port);
    for (port, sent, mut s, since) in held {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        // EOF, or a reset (what the kernel sends when bytes the server never read are left).
        let closed = match s.read_to_end(&mut buf) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(
            closed && since.elapsed() < Duration::from_secs(5),
            "port {port}, {sent} bytes sent: held open for {:?}",
            since.elapsed()
        );
    }
}

#[test]
fn hostile_bodies_get_clear_4xx_and_memory_stays_bounded() {
    let (_root, server) = start(&[]);
    let port = server.port;
    let infer = |body: &str| http(port, "POST", "/v2/models/mlp/infer", body).expect("answer");

    // A 1 GB body, declared and streamed: refused at the 1 MiB limit, without reading it all.
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            1u64 << 30
        )
        .expect("head");
        let chunk = vec![b' '; 1 << 16];
        let mut sent = 0usize;
        // The server answers and closes once past the limit; writes then fail.
        while sent < (64 << 20) && s.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert_eq!(status(&answer), 413, "{answer}");
        assert!(
            sent < (64 << 20),
            "the server read 64 MiB of a 1 MiB-limited body"
        );
    }

    // A huge declared shape with a tiny body, and shape/data mismatches.
    for (shape, data) in [
        (
            serde_json::json!([1_000_000_000u64, 16]),
            serde_json::json!([1.0]),
        ),
        (
            serde_json::json!([u64::MAX, u64::MAX]),
            serde_json::json!([1.0]),
        ),
        (serde_json::json!([2, 16]), serde_json::json!(vec![0.5; 16])),
        (serde_json::json!([1, 16]), serde_json::json!(vec![0.5; 17])),
        (
            serde_json::json!([1, -16]),
            serde_json::json!(vec![0.5; 16]),
        ),
    ] {
        let body = serde_json::json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}).to_string();
        let (code, out) = infer(&body);
        assert!((400..500).contains(&code), "{shape}: {code} {out}");
        assert!(out.contains("error"), "{out}");
    }

    // NaN and infinities as Triton reads them (`NaN`, `Infinity`, `-Infinity`: not JSON, but
    // what Python's json writes) are read, and answered as strict JSON; as strings, or a
    // number out of range, refused.
    for (value, want) in [
        ("NaN", 200),
        ("Infinity", 200),
        ("-Infinity", 200),
        ("nan", 400),
        ("\"NaN\"", 400),
        ("1e999", 400),
    ] {
        let data = vec![value; 16].join(",");
        let body = format!(
            "{{\"inputs\":[{{\"name\":\"x\",\"shape\":[1,16],\"datatype\":\"FP32\",\"data\":[{data}]}}]}}"
        );
        let (code, out) = infer(&body);
        assert_eq!(code, want, "{value}: {out}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_ok(),
            "{value}: {out}"
        );
    }
    // The same in KServe's v1 (TensorFlow Serving reads them too), rows and columns; a word
    // outside the values is refused, never read as anything.
    let predict = |body: &str| http(port, "POST", "/v1/models/mlp:predict", body).expect("answer");
    for (value, want) in [("NaN", 200), ("-Infinity", 200), ("nan", 400)] {
        let row = vec![value; 16].join(",");
        for body in [
            format!("{{\"instances\":[[{row}],[{row}]]}}"),
            format!("{{\"inputs\":[[{row}]]}}"),
        ] {
            let (code, out) = predict(&body);
            assert_eq!(code, want, "{body}: {out}");
            let answer: serde_json::Value = serde_json::from_str(&out).expect(&out);
            if want == 200 {
                assert!(
                    answer
                        .get("predictions")
                        .or(answer.get("outputs"))
                        .is_some(),
                    "{out}"
                );
            }
        }
    }
    let row = vec!["1"; 16].join(",");
    let (code, out) = predict(&format!(
        "{{\"instances\":[[{row}]],\"signature_name\":NaN}}"
    ));
    assert_eq!(code, 400, "{out}");
    // NaN through the binary extension is a valid float: a well-formed answer (JSON has no
    // NaN, so it comes back as null), never a crash.
    let mut bytes = Vec::new();
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0] {
        bytes.extend(std::iter::repeat_n(v.to_le_bytes(), 4).flatten());
    }
    let header = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
        "parameters": {"binary_data_size": bytes.len()}}]})
    .to_string();
    let head = format!(
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{header}",
        header.len(),
        header.len() + bytes.len()
    );
    let answer = raw(port, &head, &bytes, Duration::from_secs(20)).expect("answered");
    assert_eq!(status(&answer), 200, "{answer}");
    let json = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(
        serde_json::from_str::<serde_json::Value>(json).is_ok(),
        "{json}"
    );

    // Deeply nested JSON: refused by the parser's depth limit, no stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"x\",\"shape\":[1,16],\"datatype\":\"FP32\",\"data\":{deep}}}]}}"
    );
    let (code, out) = infer(&body);
    assert_eq!(code, 400, "{out}");
    // Truncated, binary junk, wrong content-type header lengths.
    for body in [
        "{\"inputs\":[{\"name\":\"x\"",
        "\u{0}\u{1}\u{2}",
        "[]",
        "{}",
    ] {
        let (code, out) = infer(body);
        assert_eq!(code, 400, "{body:?}: {out}");
    }
    let head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 999999\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let answer = raw(port, head, b"", Duration::from_secs(20)).expect("answered");
    assert_eq!(status(&answer), 400, "{answer}");

    good_request(port);
    let peak = proc_status_mib(server.child.id(), "VmHWM:");
    assert!(peak < 512.0, "peak RSS {peak:.0} MiB");
    println!("peak RSS after the hostile inputs: {peak:.0} MiB");
}

#[test]
fn admin_endpoints_answer_loopback_or_a_token_only() {
    // Off by default.
    let (_root, server) = start(&[]);
    let (code, _) = http(server.port, "POST", "/v2/repository/models/mlp/load", "").expect("load");
    assert_eq!(code, 403);
    drop(server);
    // With a token: 401 without it or with a wrong one, 200 with it.
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").expect("token");
    let (_root, server) = start(&[
        "--admin",
        "--admin-token-file",
        token_file.to_str().expect("utf-8"),
    ]);
    let call = |auth: &str| {
        let head = format!(
            "POST /v2/repository/models/mlp/load HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        status(&raw(server.port, &head, b"", Duration::from_secs(30)).expect("answered"))
    };
    assert_eq!(call(""), 401);
    assert_eq!(call("Authorization: Bearer wrong\r\n"), 401);
    assert_eq!(
        call("Authorization: Bearer s3cret-admin-token-0123456789\r\n"),
        200
    );
    // A short token is refused at start-up.
    std::fs::write(&token_file, "short").expect("token");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-server"))
        .args(["--root", "/nonexistent", "--admin", "--admin-token-file"])
        .arg(&token_file)
        .envs(ort_env())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shorter than 16"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `data` gzip-compressed.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(data).expect("gzip");
    w.finish().expect("gzip")
}

#[test]
fn compressed_bodies_inflate_within_the_limit_and_bad_ones_are_refused() {
    let (_root, server) = start(&[]);
    let port = server.port;
    // `body` sent with `Content-Encoding: coding` and `Accept-Encoding: accept`: the answer's
    // status and head (lower case).
    let post = |coding: &str, accept: &str, body: &[u8]| -> (u16, String) {
        let head = format!(
            "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: {coding}\r\nAccept-Encoding: {accept}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let answer = raw(port, &head, body, Duration::from_secs(20)).expect("answered");
        let head = answer.split_once("\r\n\r\n").map_or("", |(h, _)| h);
        (status(&answer), head.to_ascii_lowercase())
    };
    let request = |rows: usize| {
        serde_json::json!({"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32",
            "data": vec![0.25; rows * 16]}]})
        .to_string()
    };

    // gzip in; a small answer goes back plain, a big one in gzip to a client that asks.
    let (code, head) = post("gzip", "gzip", &gzip(request(1).as_bytes()));
    assert_eq!(code, 200, "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let (code, head) = post("gzip", "deflate;q=0, gzip", &gzip(request(32).as_bytes()));
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let (code, head) = post("identity", "identity", request(32).as_bytes());
    assert_eq!(code, 200, "{head}");
    assert!(!head.contains("content-encoding"), "{head}");

    // A bomb: 64 MiB of spaces in 64 KiB of gzip, against the 1 MiB limit.
    let before = proc_status_mib(server.child.id(), "VmRSS:");
    let (code, head) = post("gzip", "gzip", &gzip(&vec![b' '; 64 << 20]));
    assert_eq!(code, 413, "{head}");
    let grown = proc_status_mib(server.child.id(), "VmHWM:") - before;
    assert!(grown < 64.0, "a bomb grew the peak by {grown:.0} MiB");
    // Not gzip; codings kiln does not read (one unknown, two stacked).
    let (code, head) = post("gzip", "gzip", b"{\"inputs\": []}");
    assert_eq!(code, 400, "{head}");
    for coding in ["br", "gzip, gzip"] {
        let (code, head) = post(coding, "gzip", &gzip(request(1).as_bytes()));
        assert_eq!(code, 415, "{coding}: {head}");
        // RFC 7694: a 415 for a coding names the codings the server reads.
        assert!(
            head.to_ascii_lowercase()
                .contains("accept-encoding: gzip, deflate"),
            "{coding}: {head}"
        );
    }
    good_request(port);
}
