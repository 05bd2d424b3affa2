//! A fault-injecting TCP proxy for the agent's reliability tests: in front of a real store it
//! passes traffic through, or (on command) refuses connections, answers 500 / 503 SlowDown,
//! cuts response bodies short, resets connections mid-body, or trickles bytes. It counts the
//! response bytes it passes on, so a test can tell what was downloaded again.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the connections it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Fault {
    None,
    Down,
    Error500,
    SlowDown503,
    Truncate,
    Reset,
    Slow,
}

pub(crate) const FAULTS: [Fault; 6] = [
    Fault::Down,
    Fault::Error500,
    Fault::SlowDown503,
    Fault::Truncate,
    Fault::Reset,
    Fault::Slow,
];

/// The proxy: every accepted connection is handled according to the fault set now.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    fault: Arc<AtomicU8>,
    /// Connections handled with a fault (not `None` or `Slow`).
    pub(crate) injected: Arc<AtomicUsize>,
    /// Response bytes passed on to clients (bytes a killed client never read included).
    pub(crate) served: Arc<AtomicU64>,
    /// Ranged GETs passed on (requests with a `Range: bytes=` header): what a client asked
    /// for, whatever it got to read.
    pub(crate) ranged: Arc<AtomicU64>,
}

impl Proxy {
    pub(crate) async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let injected = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let ranged = Arc::new(AtomicU64::new(0));
        let counters = Counters {
            served: Arc::clone(&served),
            ranged: Arc::clone(&ranged),
        };
        let (f, inj) = (Arc::clone(&fault), Arc::clone(&injected));
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                let fault = FAULTS
                    .into_iter()
                    .chain([Fault::None])
                    .find(|x| *x as u8 == f.load(Ordering::Relaxed))
                    .unwrap_or(Fault::None);
                if !matches!(fault, Fault::None | Fault::Slow) {
                    inj.fetch_add(1, Ordering::Relaxed);
                }
                tokio::spawn(handle(client, upstream, fault, n, counters.clone()));
            }
        });
        Self {
            port,
            fault,
            injected,
            served,
            ranged,
        }
    }

    pub(crate) fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::Relaxed);
    }
}

async fn read_head(client: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// What the proxy counts, shared by every connection.
#[derive(Clone)]
struct Counters {
    served: Arc<AtomicU64>,
    ranged: Arc<AtomicU64>,
}

async fn handle(mut client: TcpStream, upstream: u16, fault: Fault, n: u64, counters: Counters) {
    let Counters { served, ranged } = counters;
    match fault {
        Fault::Down => {
            // Closed with a reset before a byte is read: what a dead store looks like.
            let _ = client.set_zero_linger();
        }
        Fault::Error500 | Fault::SlowDown503 => {
            let _ = read_head(&mut client).await;
            let answer: &[u8] = if fault == Fault::Error500 {
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\ncontent-length: 95\r\nconnection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>\n"
            };
            let _ = client.write_all(answer).await;
        }
        Fault::None | Fault::Truncate | Fault::Reset | Fault::Slow => {
            let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let (mut cr, mut cw) = client.split();
            let (mut ur, mut uw) = up.split();
            // Responses are cut after a pseudo-random number of bytes (past the headers for
            // most, so the body is what gets cut).
            let cut = 200 + (n.wrapping_mul(2_654_435_761) % 60_000) as usize;
            let down = async {
                let mut buf = vec![0u8; 16 << 10];
                let mut sent = 0usize;
                loop {
                    let want = match fault {
                        Fault::Truncate | Fault::Reset => buf.len().min(cut - sent),
                        _ => buf.len(),
                    };
                    if want == 0 {
                        break;
                    }
                    let got = match ur.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => break,
                        Ok(g) => g,
                    };
                    if cw.write_all(&buf[..got]).await.is_err() {
                        break;
                    }
                    served.fetch_add(got as u64, Ordering::Relaxed);
                    sent += got;
                    if fault == Fault::Slow {
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                }
            };
            let up_copy = async {
                let mut buf = vec![0u8; 8 << 10];
                loop {
                    let got = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(g) => g,
                    };
                    let head = String::from_utf8_lossy(&buf[..got]).to_ascii_lowercase();
                    ranged.fetch_add(
                        head.matches("range: bytes=").count() as u64,
                        Ordering::Relaxed,
                    );
                    if uw.write_all(&buf[..got]).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                () = down => {}
                () = up_copy => {}
            }
            if fault == Fault::Reset {
                let _ = client.set_zero_linger();
            }
        }
    }
}
