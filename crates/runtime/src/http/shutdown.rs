//! Stopping a service the way Kubernetes stops a pod, within one budget.
//!
//! On SIGTERM the endpoints controller is still routing to the pod for a few seconds, and a
//! gRPC client's connection stays on it until told to go. So readiness turns false at once
//! ([`AppState::draining`]) while every request, unary or streamed, goes on being served for
//! the drain delay; then the listeners close ([`AppState::closing`]: HTTP/2 connections get a
//! GOAWAY, open `ModelStreamInfer` streams end `UNAVAILABLE`) and open connections finish
//! their requests; then the runtime's blocking work, the repository watcher and every model's
//! drain stop. The whole of it has one budget, which the pod's
//! `terminationGracePeriodSeconds` must exceed; each step gets what the ones before left
//! (the last two at least [`DRAIN_FLOOR`], for what is idle to stop cleanly). Work still
//! running when the budget is spent (a batch inside ONNX Runtime, an admin load) must not
//! hold the process into the kubelet's SIGKILL: [`Shutdown::finish`] says so, and the
//! service ends with [`exit_now`].
//!
//! `kiln-server` and `kiln-classify-service` both stop this way; a service of your own built
//! on [`serve()`](crate::http::serve()) can too:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use kiln::http::shutdown::{exit_now, Shutdown, Stopped};
//! # use kiln::http::{AppState, ServeOptions};
//! # fn demo(rt: tokio::runtime::Runtime, state: Arc<AppState>, app: kiln::http::axum::Router,
//! #     listener: std::net::TcpListener, watcher: std::thread::JoinHandle<()>) {
//! let shutdown = Shutdown::new(Duration::from_secs(5), Duration::from_secs(30));
//! let options = ServeOptions { shutdown_grace: shutdown.connection_grace(), ..ServeOptions::default() };
//! rt.block_on(async {
//!     let listener = tokio::net::TcpListener::from_std(listener).unwrap();
//!     kiln::http::serve(listener, app, options, shutdown.signalled(&state)).await;
//! });
//! match shutdown.finish(rt, watcher, Arc::clone(&state.repo)) {
//!     Stopped::Clean => {}
//!     Stopped::BudgetSpent => exit_now(0),
//!     Stopped::Failed => exit_now(1),
//! }
//! # }
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::AppState;
use crate::Repository;

/// The least time the runtime's stop and the models' drain each get, even when the
/// connections took the whole budget: enough for what is idle (and the repository watcher,
/// which looks every 50 ms) to stop.
pub const DRAIN_FLOOR: Duration = Duration::from_millis(250);

/// One shutdown: its drain delay and budget, and when the signal came.
#[derive(Debug)]
pub struct Shutdown {
    drain_delay: Duration,
    budget: Duration,
    signalled_at: OnceLock<Instant>,
}

/// How [`Shutdown::finish`] ended.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Everything stopped within the budget: return from `main`.
    Clean,
    /// The budget ran out with work still running, maybe inside ONNX Runtime (logged): end
    /// the process now, [`exit_now`]`(0)`; returning from `main` would run the library's
    /// static destructors under it.
    BudgetSpent,
    /// Stopping the models panicked (logged): [`exit_now`]`(1)`.
    Failed,
}

impl Shutdown {
    /// A shutdown serving on for `drain_delay` after the signal, all of it within `budget`
    /// (the delay is cut to the budget).
    pub fn new(drain_delay: Duration, budget: Duration) -> Self {
        Self {
            drain_delay: drain_delay.min(budget),
            budget,
            signalled_at: OnceLock::new(),
        }
    }

    /// What the open connections get once the listeners close: the budget less the delay
    /// (set it as [`ServeOptions::shutdown_grace`](crate::http::ServeOptions)).
    pub fn connection_grace(&self) -> Duration {
        self.budget.saturating_sub(self.drain_delay)
    }

    /// Resolves when the listeners should close: after SIGTERM or SIGINT
    /// ([`terminated`](crate::http::terminated)), `state` turned not ready, and the drain
    /// delay served through. Sets [`AppState::closing`] as it resolves. Pass it as
    /// [`serve()`](crate::http::serve())'s `shutdown`; with several listeners, await it once
    /// and tell each (`kiln-server` uses a `tokio::sync::watch`). The signal handler is
    /// installed when this is first polled: a signal before that ends the process at once.
    pub async fn signalled(&self, state: &AppState) {
        crate::http::terminated().await;
        let _ = self.signalled_at.set(Instant::now());
        // Readiness first, so the endpoints controller stops routing here; requests already
        // routed are served through the delay.
        state.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            delay_s = self.drain_delay.as_secs_f64(),
            budget_s = self.budget.as_secs_f64(),
            "shutting down: not ready, still serving"
        );
        tokio::time::sleep(self.drain_delay).await;
        tracing::info!("closing the listeners");
        state.closing.store(true, Ordering::Relaxed);
    }

    /// After the listeners' [`serve()`](crate::http::serve()) returned: stops `rt` (its
    /// tasks and blocking work: a decode, an admin load), then the repository `watcher`
    /// (whose stop flag the caller has set), then every model of `repo`, each within what is
    /// left of the budget counted from the signal (from now, if none came), but at least
    /// [`DRAIN_FLOOR`]. Logs how it ended and how long the whole shutdown took.
    pub fn finish(
        &self,
        rt: tokio::runtime::Runtime,
        watcher: JoinHandle<()>,
        repo: Arc<Repository>,
    ) -> Stopped {
        let term_at = *self.signalled_at.get_or_init(Instant::now);
        let deadline = term_at + self.budget;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(DRAIN_FLOOR)
        };
        let wait = left();
        let stopping = Instant::now();
        rt.shutdown_timeout(wait);
        let runtime_stopped = stopping.elapsed() < wait;
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        let left = left();
        std::thread::spawn(move || {
            let _ = watcher.join();
            for handle in repo.handles() {
                handle.shutdown();
            }
            let _ = done.send(());
        });
        let budget_s = self.budget.as_secs_f64();
        let stopped = match finished.recv_timeout(left) {
            Ok(()) if runtime_stopped => Stopped::Clean,
            Ok(()) => {
                tracing::warn!(
                    budget_s,
                    "work still running (an admin load?) when the shutdown budget ran out; exiting"
                );
                Stopped::BudgetSpent
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    budget_s,
                    "models still draining when the shutdown budget ran out; exiting"
                );
                Stopped::BudgetSpent
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                tracing::error!("stopping the models failed (a panic, logged above); exiting");
                Stopped::Failed
            }
        };
        tracing::info!(took_s = term_at.elapsed().as_secs_f64(), "stopped");
        stopped
    }
}

/// The most seconds [`parse_seconds`] takes (about 11.6 days): a deadline that far off is
/// never reached, and times computed from it never overflow.
pub const MAX_SECONDS: f64 = 1e6;

/// A number of seconds, fractions allowed, 0 to [`MAX_SECONDS`]: a service's timeout flags
/// (`--drain-delay-s`, `--shutdown-timeout-s`, ...) as clap's `value_parser`.
pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s <= MAX_SECONDS)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{raw:?} is not a number of seconds (0 to {MAX_SECONDS})"))
}

/// Ends the process now with `code`, running no destructor and no `atexit` handler: work is
/// still running, maybe inside ONNX Runtime, and returning from `main` (or `exit`) would run
/// the library's static destructors under it. Standard output is flushed first.
pub fn exit_now(code: i32) -> ! {
    std::io::Write::flush(&mut std::io::stdout()).ok();
    // SAFETY: `_exit` only ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_cut_to_the_budget_and_connections_get_the_rest() {
        let s = Shutdown::new(Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(s.connection_grace(), Duration::from_secs(25));
        let s = Shutdown::new(Duration::from_secs(40), Duration::from_secs(30));
        assert_eq!(s.drain_delay, Duration::from_secs(30));
        assert_eq!(s.connection_grace(), Duration::ZERO);
    }

    #[test]
    fn seconds_take_fractions_and_refuse_what_is_not_a_duration() {
        assert_eq!(parse_seconds(" 1.5 "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "NaN", "inf", "1e7", "5s", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
