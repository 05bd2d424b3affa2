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
//! A gRPC stream (`ModelStreamInfer`, health `Watch`) is a request in flight for as long as it
//! is open, so an open stream keeps its connection from the idle timeout, as in grpc-go. But a
//! stream waiting only on its client ([`Activity::park`]: nothing of its own running or
//! unanswered, no message half arrived) does not keep its slot from a waiting client: clients
//! holding every slot with idle streams kept every other client out for good. A connection
//! closed to give way (or at shutdown) ends its streams ([`streams_ended`]): each
//! answers what it has in flight, then ends UNAVAILABLE, and its client opens a new one.
//!
//! A connection whose graceful close its client never completes (it answers no GOAWAY PING,
//! or takes none of what h2 still holds) is dropped a send timeout (without one,
//! [`CLOSE_BOUND`]) after the close began, once nothing is in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
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
            counts: AtomicU64::new(0),
            quiet_since: AtomicU64::new(0),
            told: AtomicBool::new(false),
            give_way: Notify::new(),
            streams_end: watch::channel(false).0,
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Arc::clone(&activity));
        let registered = Registered {
            id,
            connections: Arc::clone(self),
        };
        (activity, registered)
    }

    /// Tells the connection quiet the longest ([`Activity::quiet_for`]), for
    /// [`PRESSED_IDLE`] at least and neither told yet nor closing already, to close; whether
    /// there was one.
    pub(crate) fn give_way(&self) -> bool {
        let open = self.lock();
        let longest = open
            .values()
            .filter(|a| !a.told.load(Ordering::Relaxed))
            .filter_map(|a| a.quiet_for().map(|idle| (idle, a)))
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

/// One in [`Activity::counts`]' high half: a stream parked.
const PARKED: u64 = 1 << 32;

/// What one connection has in flight, and since when it has had nothing.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Requests in flight (the low half), and the streams among them parked (the high
    /// half): one word, so that both are read at once.
    counts: AtomicU64,
    /// When the last request ended, a stream parked or the client sent, nanoseconds since
    /// `start`: with nothing in flight, when the last request ended (a stream parks before
    /// its request ends).
    quiet_since: AtomicU64,
    /// Whether a waiting client told it to give way, or it is closing already.
    told: AtomicBool,
    give_way: Notify,
    /// Set once the connection closes (to give way, or at shutdown, [`Activity::closing`]):
    /// its streams end at their first quiet moment.
    streams_end: watch::Sender<bool>,
}

/// A request in flight on its connection, until dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: whoever sees the count fall to zero sees this end with it (the
        // latest, when two end at once).
        self.0.touch();
        self.0.counts.fetch_sub(1, Ordering::Release);
    }
}

/// A stream waiting only on its client ([`Activity::park`]), until dropped.
#[derive(Debug)]
pub(crate) struct Parked(Arc<Activity>);

impl Parked {
    /// The connection its stream is on.
    pub(crate) fn connection(&self) -> &Activity {
        &self.0
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.counts.fetch_sub(PARKED, Ordering::Release);
    }
}

impl Activity {
    fn nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Requests in flight, and the streams among them parked.
    fn counts(&self) -> (u64, u64) {
        let counts = self.counts.load(Ordering::Acquire);
        (counts & (PARKED - 1), counts >> 32)
    }

    fn quiet_since(&self) -> Duration {
        let since = self.quiet_since.load(Ordering::Relaxed);
        Duration::from_nanos(self.nanos().saturating_sub(since))
    }

    /// A request ended, or the client sent something that is not a request in itself (its
    /// first bytes, or a stream's message): idle, and quiet, from now at the soonest.
    pub(crate) fn touch(&self) {
        self.quiet_since.fetch_max(self.nanos(), Ordering::Relaxed);
    }

    /// The connection is closing (shutdown, or idle): no waiting client need tell it, and its
    /// streams end at their first quiet moment ([`streams_ended`]).
    pub(crate) fn closing(&self) {
        self.told.store(true, Ordering::Relaxed);
        self.streams_end.send_replace(true);
    }

    /// The connection a request came on (in its extensions), when served by
    /// [`serve`](super::serve::serve).
    pub(crate) fn of(extensions: &hyper::http::Extensions) -> Option<Arc<Self>> {
        extensions.get::<Arc<Self>>().cloned()
    }

    /// A request arrived; in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> Busy {
        self.counts.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// A stream of this connection (a request in flight, [`Activity::enter`]) waits only on
    /// its client until the guard is dropped: nothing of its own is running or unanswered,
    /// and no message of its is half arrived (a body reading one holds a [`Busy`] of its
    /// own meanwhile). The connection is then quiet if all it has in flight is parked
    /// streams; it may give way, and its parked streams end ([`streams_ended`]).
    pub(crate) fn park(self: &Arc<Self>) -> Parked {
        // The time first, as a request's end.
        self.touch();
        self.counts.fetch_add(PARKED, Ordering::Release);
        Parked(Arc::clone(self))
    }

    /// How long the connection has had nothing in flight; `None` while something is.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        let (busy, _) = self.counts();
        (busy == 0).then(|| self.quiet_since())
    }

    /// How long the connection has had nothing in flight but parked streams; `None` while
    /// something else is.
    pub(crate) fn quiet_for(&self) -> Option<Duration> {
        let (busy, parked) = self.counts();
        // A stream's request may end just before its parking does: at most as many.
        (busy <= parked).then(|| self.quiet_since())
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
                    // Told when quiet long enough; a request may have come since.
                    if self.quiet_for().is_some_and(|idle| idle >= PRESSED_IDLE) {
                        return Idle::GaveWay;
                    }
                    self.told.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Resolves once `connection` closes ([`Activity::closing`]; never without one): a stream
/// answers what it has in flight, then ends, so that the close can finish.
pub(crate) async fn streams_ended(connection: Option<&Activity>) {
    let Some(connection) = connection else {
        return std::future::pending().await;
    };
    let mut end = connection.streams_end.subscribe();
    // The sender lives as long as `connection`: an error cannot come while this is awaited.
    let _ = end.wait_for(|end| *end).await;
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

    #[tokio::test(start_paused = true)]
    async fn a_parked_stream_keeps_its_connection_from_the_timeout_but_not_from_a_waiting_client() {
        let connections = Arc::new(Connections::default());
        let (activity, _registered) = connections.open();
        let stream = activity.enter();
        let idle = activity.idle(Some(Duration::from_secs(10)));
        tokio::pin!(idle);
        // A stream with work of its own: never quiet.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!connections.give_way());
        let parked = activity.park();
        // A message half arrived holds the connection as a request does.
        let reading = activity.enter();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!connections.give_way());
        drop(reading);
        assert!(
            !connections.give_way(),
            "told within a second of its message"
        );
        // Parked, and nothing else in flight: quiet, but not idle.
        assert!(tokio::time::timeout(Duration::from_secs(60), &mut idle)
            .await
            .is_err());
        assert_eq!(activity.idle_for(), None);
        let ended = {
            let activity = Arc::clone(&activity);
            tokio::spawn(async move { streams_ended(Some(&activity)).await })
        };
        assert!(connections.give_way());
        assert_eq!(idle.await, Idle::GaveWay);
        tokio::task::yield_now().await;
        assert!(!ended.is_finished(), "streams ended before the close");
        activity.closing();
        assert!(ended.await.is_ok());
        // Its request ended before its parking: idle, and still quiet.
        drop(stream);
        assert!(activity.idle_for().is_some());
        assert!(activity.quiet_for().is_some());
        drop(parked);
        assert!(activity.quiet_for().is_some());
    }
}
