//! Connections with nothing in flight. A connection holds its slot
//! ([`ServeOptions::max_connections`](super::ServeOptions)) for as long as its client keeps
//! it open, and an HTTP/2 (gRPC) client may keep one open with no call at all: hyper answers
//! its PINGs and times nothing else. (An HTTP/1.1 connection's wait for its next request is
//! bounded by the header-read timeout, which hyper runs while it waits for a head.) So gRPC
//! channels left idle between bursts, or clients opening connections only to hold them, kept
//! every further client waiting for a slot for as long as they liked.
//!
//! Each connection counts what it has in flight ([`Activity`]: a request, from its head until
//! its answer's body is done with) and is closed gracefully (over HTTP/2 a GOAWAY, after
//! which a client opens a new connection for its next call) once it has had nothing in
//! flight:
//!
//! - for [`ServeOptions::idle_timeout`](super::ServeOptions), as grpc-go's
//!   `MaxConnectionIdle` and nginx's `keepalive_timeout`;
//! - or for [`PRESSED_IDLE`] while every slot is taken and an accepted client waits for one
//!   ([`Connections::give_way`]: the one idle the longest, one at a time), as nginx hands its
//!   idle keep-alive connections' slots to new clients when it runs out (also when the
//!   process runs out of file descriptors).
//!
//! A connection with a call in flight keeps its slot. That includes a gRPC stream
//! (`ModelStreamInfer`, health `Watch`) open with no message in flight: it waits for its
//! client with no timer of its own, so clients holding every slot with idle streams are not
//! relieved here (they end when the listeners close). A connection whose graceful close its
//! client never completes (it answers no GOAWAY PING, or takes none of what h2 still holds)
//! is dropped a send timeout (without one, [`CLOSE_BOUND`]) after the close began, once
//! nothing is in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection must have had nothing in flight to give its slot to a waiting client:
/// long enough that a client between two requests it sends back to back keeps its connection.
pub(crate) const PRESSED_IDLE: Duration = Duration::from_secs(1);

/// How long a waiting client gives a connection told to give way before telling the next:
/// an idle HTTP/2 connection closes once its client has answered the GOAWAY's PING, a round
/// trip.
pub(crate) const GIVE_WAY_WAIT: Duration = Duration::from_secs(1);

/// The most a connection with nothing in flight may take to finish its graceful close, when
/// the send timeout is off (otherwise the send timeout: a client that took nothing of what
/// h2 still held for that long would have been cut anyway).
pub(crate) const CLOSE_BOUND: Duration = Duration::from_secs(60);

/// Why a connection was found idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Nothing in flight for the idle timeout.
    TimedOut,
    /// Told to give its slot to a waiting client ([`Connections::give_way`]).
    GaveWay,
}

/// A listener's open connections, for a client waiting for a slot to find the one idle the
/// longest: one told at a time (the next only if the slot has not come a [`GIVE_WAY_WAIT`]
/// later), and no connection is woken that is not told.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// A connection's place in [`Connections`], until dropped.
#[derive(Debug)]
pub(crate) struct Registered {
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection opened now, with nothing in flight: what it counts, and its place.
    pub(crate) fn open(self: &Arc<Self>) -> (Arc<Activity>, Registered) {
        let activity = Arc::new(Activity {
            start: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            told: AtomicBool::new(false),
            give_way: Notify::new(),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Arc::clone(&activity));
        let registered = Registered {
            id,
            connections: Arc::clone(self),
        };
        (activity, registered)
    }

    /// Tells the connection with nothing in flight the longest, for [`PRESSED_IDLE`] at
    /// least and neither told yet nor closing already, to close; whether there was one.
    pub(crate) fn give_way(&self) -> bool {
        let open = self.lock();
        let longest = open
            .values()
            .filter(|a| !a.told.load(Ordering::Relaxed))
            .filter_map(|a| a.idle_for().map(|idle| (idle, a)))
            .filter(|(idle, _)| *idle >= PRESSED_IDLE)
            .max_by_key(|(idle, _)| *idle);
        let Some((_, activity)) = longest else {
            return false;
        };
        activity.told.store(true, Ordering::Relaxed);
        activity.give_way.notify_one();
        true
    }
}

/// What one connection has in flight, and since when it has had nothing.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    busy: AtomicUsize,
    /// When the last request in flight ended, nanoseconds since `start`.
    idle_since: AtomicU64,
    /// Whether a waiting client told it to give way, or it is closing already.
    told: AtomicBool,
    give_way: Notify,
}

/// A request in flight on its connection, until dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: whoever sees the count fall to zero sees this end with it (the
        // latest, when two end at once).
        self.0
            .idle_since
            .fetch_max(self.0.nanos(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The client sent something that is not a request (its first bytes): idle from now.
    pub(crate) fn touch(&self) {
        self.idle_since.fetch_max(self.nanos(), Ordering::Relaxed);
    }

    /// The connection is closing (shutdown, or idle): no waiting client need tell it.
    pub(crate) fn closing(&self) {
        self.told.store(true, Ordering::Relaxed);
    }

    /// A request arrived; in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// How long the connection has had nothing in flight; `None` while something is.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        Some(Duration::from_nanos(self.nanos().saturating_sub(since)))
    }

    /// Resolves once the connection has had nothing in flight for `timeout` (never, if
    /// `None`), or once told to give way.
    pub(crate) async fn idle(&self, timeout: Option<Duration>) -> Idle {
        let timed_out = async {
            let Some(timeout) = timeout else {
                return std::future::pending().await;
            };
            loop {
                // Busy: look again a timeout later (a request lasting that long ends first,
                // or goes on and is looked at again).
                let wait = match self.idle_for() {
                    Some(idle) if idle >= timeout => return,
                    Some(idle) => timeout - idle,
                    None => timeout,
                };
                tokio::time::sleep(wait).await;
            }
        };
        tokio::pin!(timed_out);
        loop {
            tokio::select! {
                () = &mut timed_out => return Idle::TimedOut,
                () = self.give_way.notified() => {
                    // Told when idle long enough; a request may have come since.
                    if self.idle_for().is_some_and(|idle| idle >= PRESSED_IDLE) {
                        return Idle::GaveWay;
                    }
                    self.told.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_and_not_while_one_is_in_flight() {
        let connections = Arc::new(Connections::default());
        let (activity, _registered) = connections.open();
        let busy = activity.enter();
        let idle = activity.idle(Some(Duration::from_secs(10)));
        tokio::pin!(idle);
        // In flight: never idle, however long.
        assert!(tokio::time::timeout(Duration::from_secs(60), &mut idle)
            .await
            .is_err());
        drop(busy);
        assert!(
            tokio::time::timeout(Duration::from_secs(9), &mut idle)
                .await
                .is_err(),
            "idle before the timeout since the last request"
        );
        let why = tokio::time::timeout(Duration::from_secs(2), &mut idle).await;
        assert_eq!(why, Ok(Idle::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_client_tells_the_connection_idle_the_longest_one_at_a_time() {
        let connections = Arc::new(Connections::default());
        let (oldest, _a) = connections.open();
        tokio::time::advance(Duration::from_secs(10)).await;
        let (younger, _b) = connections.open();
        let (working, _c) = connections.open();
        let _busy = working.enter();
        let (fresh, _d) = connections.open();
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(fresh.enter());

        let idle = |a: &Arc<Activity>| {
            let a = Arc::clone(a);
            tokio::spawn(async move { a.idle(None).await })
        };
        let (oldest_idle, younger_idle, working_idle, fresh_idle) =
            (idle(&oldest), idle(&younger), idle(&working), idle(&fresh));
        tokio::task::yield_now().await;

        assert!(connections.give_way());
        assert_eq!(oldest_idle.await.ok(), Some(Idle::GaveWay));
        assert!(!younger_idle.is_finished());
        assert!(connections.give_way());
        assert_eq!(younger_idle.await.ok(), Some(Idle::GaveWay));
        // In flight, or idle for less than a second: none gives way.
        assert!(!connections.give_way());
        tokio::time::advance(PRESSED_IDLE).await;
        assert!(connections.give_way());
        assert_eq!(fresh_idle.await.ok(), Some(Idle::GaveWay));
        assert!(!connections.give_way());
        assert!(!working_idle.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_told_as_a_request_arrives_keeps_its_slot_and_may_be_told_again() {
        let connections = Arc::new(Connections::default());
        let (activity, _registered) = connections.open();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(connections.give_way());
        let busy = activity.enter();
        let idle = activity.idle(None);
        tokio::pin!(idle);
        assert!(tokio::time::timeout(Duration::from_secs(5), &mut idle)
            .await
            .is_err());
        drop(busy);
        assert!(
            !connections.give_way(),
            "told within a second of its request"
        );
        tokio::time::advance(PRESSED_IDLE).await;
        assert!(connections.give_way());
        assert_eq!(idle.await, Idle::GaveWay);
        // Closing for a reason of its own: never told.
        let (closing, _b) = connections.open();
        closing.closing();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!connections.give_way());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_leaves_the_list() {
        let connections = Arc::new(Connections::default());
        let (_activity, registered) = connections.open();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(registered);
        assert!(!connections.give_way());
        assert!(connections.lock().is_empty());
    }
}
