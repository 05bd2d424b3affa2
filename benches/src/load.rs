//! An HTTP/1.1 load generator for inference endpoints, the same for every server the
//! benchmarks compare (kiln, the Python peers) and for the demo's `kiln-load`:
//!
//! - **closed loop**: N clients, each sending its next request when the last one is answered;
//! - **open loop**: requests *scheduled* at a fixed rate, whether or not earlier ones were
//!   answered. Latency counts from the scheduled time, not from when a client got round to
//!   sending it, so a server that falls behind is charged for the queue it builds (no
//!   coordinated omission). A pool of clients sends them; if all are busy, the next
//!   request is late and its lateness counts.
//!
//! Blocking sockets, one thread and one keep-alive connection per client: no async runtime to
//! share the CPU with the server under test, and nothing between the socket and the clock.
//! Any answer but 200, a broken connection or a timeout is a failure.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where requests go and what they carry.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub host: String,
    /// Request path, e.g. `/v2/models/m/infer`.
    pub path: String,
    /// The request body, sent as is.
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: String,
    /// More header lines, each ending in `\r\n` (e.g. the v2 binary extension's
    /// `Inference-Header-Content-Length`).
    pub headers: String,
}

impl Target {
    /// A JSON POST to `url` (`http://host:port/path`).
    ///
    /// # Errors
    /// The URL is not `http://host:port/path`.
    pub fn json(url: &str, body: Vec<u8>) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: must be http://host:port/path"))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url}: needs a path"))?;
        Ok(Self {
            host: host.to_owned(),
            path: format!("/{path}"),
            body,
            content_type: "application/json".into(),
            headers: String::new(),
        })
    }
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` clients, each with one request outstanding at a time.
    Closed {
        /// Clients.
        concurrency: usize,
    },
    /// `rate` requests per second, scheduled evenly, sent by up to `clients` connections.
    Open {
        /// Requests per second.
        rate: f64,
        /// Most requests outstanding at once (clients in the pool).
        clients: usize,
    },
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed (non-200, broken connection, timeout).
    pub failed: u64,
    /// From the start to the last answer.
    pub elapsed: Duration,
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// Latencies of the answers other than 200 (a 429 shed quickly, say), sorted.
    pub refused_latencies: Vec<Duration>,
    /// Answers by HTTP status code (200 included; broken connections and timeouts are 0).
    pub codes: BTreeMap<u16, u64>,
    /// Answers per `model_version` field of the response body (empty key: none given).
    pub versions: BTreeMap<String, u64>,
    /// The first few failures, for the log.
    pub failures: Vec<String>,
}

impl Report {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        crate::quantile(&self.latencies, q)
    }

    /// Failed ÷ all requests.
    pub fn error_rate(&self) -> f64 {
        self.failed as f64 / (self.ok + self.failed).max(1) as f64
    }

    /// One line: requests, throughput, percentiles, failures.
    pub fn summary(&self) -> String {
        let ms = |q| self.quantile(q).as_secs_f64() * 1e3;
        format!(
            "{} requests in {:.1} s: {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} failed",
            self.ok + self.failed,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            self.failed
        )
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies.extend(other.latencies);
        self.refused_latencies.extend(other.refused_latencies);
        for (c, n) in other.codes {
            *self.codes.entry(c).or_default() += n;
        }
        for (v, n) in other.versions {
            *self.versions.entry(v).or_default() += n;
        }
        let room = 5usize.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }
}

/// One client: a keep-alive connection, opened on first use and after any error.
struct Client<'a> {
    target: &'a Target,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    head: Vec<u8>,
    line: String,
    body: Vec<u8>,
    report: Report,
}

impl<'a> Client<'a> {
    fn new(target: &'a Target, timeout: Duration) -> Self {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
            target.path,
            target.host,
            target.content_type,
            target.body.len(),
            target.headers
        );
        Self {
            target,
            timeout,
            conn: None,
            head: head.into_bytes(),
            line: String::new(),
            body: Vec::new(),
            report: Report::default(),
        }
    }

    /// Sends one request; `since` is when it counts from.
    fn request(&mut self, since: Instant) {
        match self.exchange() {
            Ok(200) => {
                *self.report.codes.entry(200).or_default() += 1;
                self.report.ok += 1;
                self.report.latencies.push(since.elapsed());
                let version = model_version(&self.body).unwrap_or_default();
                *self.report.versions.entry(version).or_default() += 1;
            }
            Ok(code) => {
                *self.report.codes.entry(code).or_default() += 1;
                self.report.refused_latencies.push(since.elapsed());
                self.report.failed += 1;
                if self.report.failures.len() < 5 {
                    let body = String::from_utf8_lossy(&self.body);
                    let body: String = body.chars().take(300).collect();
                    self.report.failures.push(format!("{code}: {body}"));
                }
            }
            Err(e) => {
                self.conn = None;
                *self.report.codes.entry(0).or_default() += 1;
                self.report.failed += 1;
                if self.report.failures.len() < 5 {
                    self.report.failures.push(e.to_string());
                }
            }
        }
    }

    /// An open-loop request never sent: due `behind` ago, past the timeout.
    fn late(&mut self, behind: Duration) {
        *self.report.codes.entry(0).or_default() += 1;
        self.report.failed += 1;
        if self.report.failures.len() < 5 {
            self.report.failures.push(format!(
                "not sent: due {:.1} s ago, past the timeout (every client busy)",
                behind.as_secs_f64()
            ));
        }
    }

    /// One request/response on the connection; the status code (the body in `self.body`).
    fn exchange(&mut self) -> std::io::Result<u16> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.target.host)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(BufReader::new(s));
        }
        let r = self.conn.as_mut().ok_or_else(|| bad("no connection"))?;
        {
            let w = r.get_mut();
            w.write_all(&self.head)?;
            w.write_all(&self.target.body)?;
        }
        self.line.clear();
        r.read_line(&mut self.line)?;
        let code: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let (mut len, mut close) = (None, false);
        loop {
            self.line.clear();
            if r.read_line(&mut self.line)? == 0 {
                return Err(bad("connection closed in the headers"));
            }
            if self.line == "\r\n" {
                break;
            }
            if let Some((k, v)) = self.line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok();
                } else if k.eq_ignore_ascii_case("connection") {
                    close = v.trim().eq_ignore_ascii_case("close");
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked answers are not supported"));
                }
            }
        }
        let len = len.ok_or_else(|| bad("no content-length"))?;
        self.body.resize(len, 0);
        r.read_exact(&mut self.body)?;
        if close {
            self.conn = None;
        }
        Ok(code)
    }
}

/// One `GET` on a fresh connection (`Connection: close`): the status code and body. For
/// readiness probes and status pages around a run, not for load.
///
/// # Errors
/// The connection fails or the answer is not HTTP.
pub fn get(host: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    once(
        host,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        &[],
        timeout,
    )
}

/// One JSON `POST` on a fresh connection (`Connection: close`): the status code and body. For
/// checking an answer around a run, not for load.
///
/// # Errors
/// The connection fails or the answer is not HTTP.
pub fn post_json(
    host: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    once(host, &head, body, timeout)
}

fn once(host: &str, head: &str, body: &[u8], timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, raw[split + 4..].to_vec()))
}

/// The `"model_version":"…"` of a JSON answer, found without parsing the whole body (the
/// generator must stay cheap: it shares the CPU with the server under test).
fn model_version(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"model_version\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &body[at..];
    let open = rest.iter().position(|&b| b == b'"')? + 1;
    let len = rest[open..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&rest[open..open + len]).into_owned())
}

/// Offers `mode` load on `target` for `duration`; each request may take up to `timeout`.
/// In open loop, exactly `rate × duration` requests are scheduled; one still unsent
/// `timeout` after its time fails unsent, so a run ends within about `duration + 2 × timeout`
/// however slow the server.
pub fn run(target: &Target, mode: Mode, duration: Duration, timeout: Duration) -> Report {
    let start = Instant::now();
    let stop = start + duration;
    let next = AtomicU64::new(0);
    let (clients, rate) = match mode {
        Mode::Closed { concurrency } => (concurrency.max(1), None),
        Mode::Open { rate, clients } => (clients.max(1), Some(rate.max(1e-3))),
    };
    let total = rate.map(|r| (r * duration.as_secs_f64()).round() as u64);
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let next = &next;
                scope.spawn(move || {
                    let mut c = Client::new(target, timeout);
                    match (rate, total) {
                        (Some(rate), Some(total)) => loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= total {
                                break;
                            }
                            let at = start + Duration::from_secs_f64(i as f64 / rate);
                            let now = Instant::now();
                            if let Some(wait) = at.checked_duration_since(now) {
                                std::thread::sleep(wait);
                            } else if now - at > timeout {
                                // Every client was busy for longer than the timeout: this
                                // request would already have failed at the client.
                                c.late(now - at);
                                continue;
                            }
                            c.request(at);
                        },
                        _ => {
                            while Instant::now() < stop {
                                c.request(Instant::now());
                            }
                        }
                    }
                    c.report
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut report = Report {
        elapsed: start.elapsed(),
        ..Report::default()
    };
    for r in reports {
        report.merge(r);
    }
    report.latencies.sort_unstable();
    report.refused_latencies.sort_unstable();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A tiny keep-alive HTTP server answering `status` with a fixed body to every request.
    fn serve(status: u16) -> (String, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let h = std::thread::spawn(move || {
            for s in l.incoming().take(4) {
                let Ok(s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    loop {
                        let mut len = 0;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let out = br#"{"model_name":"m","model_version":"7","outputs":[]}"#;
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
                            out.len()
                        );
                        let w = r.get_mut();
                        if w.write_all(head.as_bytes())
                            .and_then(|()| w.write_all(out))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, h)
    }

    #[test]
    fn closed_and_open_loops_count_answers_and_versions() {
        let (addr, _h) = serve(200);
        let t =
            Target::json(&format!("http://{addr}/v2/models/m/infer"), b"{}".to_vec()).expect("url");
        let closed = run(
            &t,
            Mode::Closed { concurrency: 2 },
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        assert!(closed.ok > 0 && closed.failed == 0, "{}", closed.summary());
        assert_eq!(closed.versions.get("7"), Some(&closed.ok));
        let open = run(
            &t,
            Mode::Open {
                rate: 200.0,
                clients: 2,
            },
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        // Exactly rate × duration requests are scheduled, and every one is answered.
        assert_eq!((open.ok, open.failed), (20, 0), "{}", open.summary());
        assert!(open.latencies.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn errors_and_dead_servers_are_failures() {
        let (addr, _h) = serve(429);
        let t = Target::json(&format!("http://{addr}/x"), Vec::new()).expect("url");
        let r = run(
            &t,
            Mode::Open {
                rate: 100.0,
                clients: 1,
            },
            Duration::from_millis(50),
            Duration::from_secs(5),
        );
        assert_eq!((r.ok, r.failed), (0, 5));
        assert!(r.failures[0].starts_with("429: "), "{:?}", r.failures);
        let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
        let gone = dead.local_addr().expect("addr").to_string();
        drop(dead);
        let t = Target::json(&format!("http://{gone}/x"), Vec::new()).expect("url");
        let r = run(
            &t,
            Mode::Open {
                rate: 100.0,
                clients: 1,
            },
            Duration::from_millis(30),
            Duration::from_secs(1),
        );
        assert_eq!((r.ok, r.failed), (0, 3));
        assert!(Target::json("https://x/y", Vec::new()).is_err());
    }

    #[test]
    fn open_loop_fails_requests_left_unsent_past_the_timeout() {
        // A server that accepts and never answers: the one client is stuck for the timeout,
        // and the requests due meanwhile fail unsent instead of stretching the run.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let _h = std::thread::spawn(move || {
            let _held: Vec<_> = l.incoming().take(2).collect();
            std::thread::sleep(Duration::from_secs(5));
        });
        let t = Target::json(&format!("http://{addr}/x"), Vec::new()).expect("url");
        let r = run(
            &t,
            Mode::Open {
                rate: 100.0,
                clients: 1,
            },
            Duration::from_millis(100),
            Duration::from_millis(300),
        );
        assert_eq!((r.ok, r.failed), (0, 10), "{:?}", r.failures);
        assert!(
            r.failures.iter().any(|f| f.starts_with("not sent")),
            "{:?}",
            r.failures
        );
        assert!(Target::json("http://x", Vec::new()).is_err());
    }

    #[test]
    fn finds_the_model_version_without_parsing() {
        assert_eq!(
            model_version(br#"{"model_name":"m","model_version": "12","x":1}"#).as_deref(),
            Some("12")
        );
        assert_eq!(model_version(b"[[1,2]]"), None);
    }
}
