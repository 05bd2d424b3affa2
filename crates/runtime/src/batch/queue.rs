//! The waiting room: per-priority FIFO queues and the batch-formation rules.
//!
//! Pure data and decisions, no threads or clocks of its own (time is passed in), so the rules
//! are unit- and property-tested directly. The batcher holds a `Queue` under one mutex.
//!
//! Rules, in order, when an instance asks for work:
//! 1. Requests whose deadline passed or whose caller went away are removed as they are met
//!    (and by [`Queue::expire`], which the deadline timer calls).
//! 2. Level: the highest priority with work, except that every `low_period`-th batch goes to
//!    the lower level whose oldest request has waited longest, if it has waited at least as
//!    long as the highest level's oldest: low priority gets a bounded share and never starves,
//!    yet is never served sooner than first come, first served would.
//! 3. The oldest request of that level opens the batch; later requests of the same level with
//!    the same non-batch dims (shape bucket) join in FIFO order while their rows fit in
//!    `max_rows`. Requests of other buckets keep their place.
//! 4. If a matching request was left over and the batch can be cut where the cumulative rows
//!    equal a preferred size, it is cut at the largest such size.
//! 5. Greedy (no delay), idle instances share the queue: each takes at most its share of the
//!    rows queued. With a queue delay, a batch may take up to `max_rows`, and an incomplete
//!    one (not full, no preferred size reached, nothing left over, no request of another
//!    shape behind it) waits until its oldest request has waited `delay` (Triton's
//!    `max_queue_delay_microseconds`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::Result;
use crate::model::NamedTensors;

/// Where a request's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<NamedTensors>>;

/// A request waiting in the queue.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Inputs in the model's input order.
    pub(crate) inputs: NamedTensors,
    /// Rows along dim 0 (1 for models without a batch dim).
    pub(crate) rows: usize,
    /// Input bytes.
    pub(crate) bytes: usize,
    /// Non-batch dims of every input: requests batch together only with equal keys.
    pub(crate) key: Vec<usize>,
    pub(crate) enqueued: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) priority: usize,
    pub(crate) reply: Reply,
}

impl Pending {
    /// What the request takes of a batch's rows: its rows, and one for a request of none (its
    /// bucket holds only such requests), so a batch of them is capped like any other.
    fn weight(&self) -> usize {
        self.rows.max(1)
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A request removed without running, and why.
#[derive(Debug)]
pub(crate) enum Dropped {
    /// Its deadline passed.
    Expired(Pending),
    /// Its caller went away.
    Cancelled(Pending),
}

/// The batch-formation parameters.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Whether requests can be stacked along dim 0.
    pub(crate) batchable: bool,
    /// Most rows per batch.
    pub(crate) max_rows: usize,
    /// Preferred batch sizes, ascending.
    pub(crate) preferred: Vec<usize>,
    /// Queue delay (zero: greedy).
    pub(crate) delay: Duration,
    /// Every this many batches, a lower priority level with work may be served (its oldest
    /// request must have waited at least as long as the top level's oldest).
    pub(crate) low_period: usize,
}

/// What an instance should do next.
#[derive(Debug)]
pub(crate) enum Take {
    /// Run these requests as one batch.
    Batch(Vec<Pending>),
    /// A batch is forming: ask again at this time (or when notified).
    WaitUntil(Instant),
    /// Nothing to do.
    Empty,
}

/// Requests waiting, by priority level.
#[derive(Debug)]
pub(crate) struct Queue {
    levels: Vec<VecDeque<Pending>>,
    requests: usize,
    bytes: usize,
    /// Rows waiting, as a batch counts them ([`Pending::weight`]).
    rows: usize,
    /// Batches served from the top level while a lower level waited.
    since_low: usize,
}

/// How far past the rows that fit a batch scan looks for more matching requests.
const SCAN_SLACK: usize = 256;

impl Queue {
    pub(crate) fn new(levels: usize) -> Self {
        Self {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            requests: 0,
            bytes: 0,
            rows: 0,
            since_low: 0,
        }
    }

    /// Requests waiting.
    pub(crate) fn len(&self) -> usize {
        self.requests
    }

    /// Input bytes waiting, as they are held in memory (`Tensor::memory_len`).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Adds a request at the back of its level.
    pub(crate) fn push(&mut self, p: Pending) {
        self.requests += 1;
        self.rows += p.weight();
        self.bytes += p.bytes;
        let level = p.priority.min(self.levels.len() - 1);
        self.levels[level].push_back(p);
    }

    fn account_removed(&mut self, p: &Pending) {
        self.requests -= 1;
        self.rows -= p.weight();
        self.bytes -= p.bytes;
    }

    /// Removes every expired or cancelled request; returns the earliest remaining deadline.
    pub(crate) fn expire(&mut self, now: Instant, dropped: &mut Vec<Dropped>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for level in 0..self.levels.len() {
            let mut kept = VecDeque::with_capacity(self.levels[level].len());
            while let Some(p) = self.levels[level].pop_front() {
                if p.expired(now) {
                    self.account_removed(&p);
                    dropped.push(Dropped::Expired(p));
                } else if p.cancelled() {
                    self.account_removed(&p);
                    dropped.push(Dropped::Cancelled(p));
                } else {
                    if let Some(d) = p.deadline {
                        next = Some(next.map_or(d, |n| n.min(d)));
                    }
                    kept.push_back(p);
                }
            }
            self.levels[level] = kept;
        }
        next
    }

    /// Removes and returns everything (shutdown).
    pub(crate) fn drain_all(&mut self) -> Vec<Pending> {
        self.requests = 0;
        self.rows = 0;
        self.bytes = 0;
        self.levels.iter_mut().flat_map(|l| l.drain(..)).collect()
    }

    /// Pops expired/cancelled requests off the front of `level`; true if a live one remains.
    fn clean_front(&mut self, level: usize, now: Instant, dropped: &mut Vec<Dropped>) -> bool {
        while let Some(front) = self.levels[level].front() {
            if !front.expired(now) && !front.cancelled() {
                return true;
            }
            if let Some(p) = self.levels[level].pop_front() {
                self.account_removed(&p);
                dropped.push(if p.expired(now) {
                    Dropped::Expired(p)
                } else {
                    Dropped::Cancelled(p)
                });
            }
        }
        false
    }

    /// The level to serve, applying the low-priority share: every `period`-th batch goes to
    /// the lower level whose front request has waited longest, if it has waited at least as
    /// long as the top level's front one. So a lower level is never starved, and never served
    /// sooner than first come, first served would serve it: asking for a lower priority
    /// cannot jump a backlog of default requests.
    fn pick_level(
        &mut self,
        now: Instant,
        period: usize,
        dropped: &mut Vec<Dropped>,
    ) -> Option<usize> {
        let live: Vec<usize> = (0..self.levels.len())
            .filter(|&l| self.clean_front(l, now, dropped))
            .collect();
        let top = *live.first()?;
        let front = |l: usize| self.levels[l].front().map(|p| p.enqueued);
        let Some(lower) = live[1..].iter().copied().min_by_key(|&l| front(l)) else {
            self.since_low = 0;
            return Some(top);
        };
        if self.since_low + 1 >= period && front(lower) <= front(top) {
            self.since_low = 0;
            Some(lower)
        } else {
            self.since_low += 1;
            Some(top)
        }
    }

    /// Forms the next batch under `policy` at time `now` for one of `idle` idle instances
    /// (counting the one asking).
    ///
    /// Greedy (no delay): several idle instances share what is queued (each takes at most
    /// `rows / idle`), so they run in parallel instead of one taking everything. With a delay,
    /// batching is the point: a batch may take up to `max_rows`, and it is ready only when it
    /// is full, reaches a preferred size, or its oldest request has waited the delay.
    pub(crate) fn take(
        &mut self,
        now: Instant,
        policy: &Policy,
        idle: usize,
        dropped: &mut Vec<Dropped>,
    ) -> Take {
        let since_low = self.since_low;
        let cap = if policy.delay.is_zero() {
            self.rows.div_ceil(idle.max(1)).clamp(1, policy.max_rows)
        } else {
            policy.max_rows
        };
        let Some(level) = self.pick_level(now, policy.low_period, dropped) else {
            return Take::Empty;
        };
        let queue = &self.levels[level];
        let Some(head) = queue.front() else {
            return Take::Empty;
        };
        if !policy.batchable {
            return Take::Batch(self.remove_marked(level, &[(0, true)], now, dropped));
        }

        // Gather matching, live requests in FIFO order while they fit.
        let mut chosen = vec![0usize];
        let mut cumulative = vec![head.weight()];
        let mut rows = head.weight();
        let mut left_over = false;
        let mut other_shape = false;
        let mut gone = Vec::new();
        let limit = 1 + cap + SCAN_SLACK;
        for (i, p) in queue.iter().enumerate().skip(1).take(limit) {
            if p.expired(now) || p.cancelled() {
                gone.push(i);
                continue;
            }
            if p.key != head.key {
                other_shape = true;
                continue;
            }
            if rows + p.weight() > cap {
                left_over = true;
                break;
            }
            rows += p.weight();
            chosen.push(i);
            cumulative.push(rows);
            if rows == cap {
                left_over = queue.iter().skip(i + 1).any(|q| q.key == head.key);
                break;
            }
        }

        // More is queued than fits: cut at the largest preferred size the prefix sums hit.
        if left_over {
            if let Some(cut) = cumulative
                .iter()
                .rposition(|c| policy.preferred.binary_search(c).is_ok())
            {
                chosen.truncate(cut + 1);
                rows = cumulative[cut];
            }
        }

        // With a queue delay, an incomplete batch waits for its oldest request's delay.
        if !policy.delay.is_zero() {
            // A request of another shape cannot join: like Triton, the batch goes now rather
            // than holding that request up behind the delay.
            let ready = left_over
                || other_shape
                || rows >= policy.max_rows
                || policy.preferred.binary_search(&rows).is_ok()
                || policy.preferred.last().is_some_and(|&p| rows >= p);
            let due = head.enqueued + policy.delay;
            if !ready && now < due {
                // No batch was served: the low-priority share counts batches, not looks.
                self.since_low = since_low;
                return Take::WaitUntil(due);
            }
        }

        // Drop the expired/cancelled requests met while scanning, along with the chosen ones.
        let mut remove: Vec<(usize, bool)> = chosen
            .iter()
            .map(|&i| (i, true))
            .chain(gone.iter().map(|&i| (i, false)))
            .collect();
        remove.sort_unstable();
        let taken = self.remove_marked(level, &remove, now, dropped);
        Take::Batch(taken)
    }

    /// Removes the marked indices (ascending): `true` ones are returned in order, `false` ones
    /// go to `dropped`. A prefix (the common case: one bucket) is popped off the front;
    /// anything else rebuilds the level once.
    fn remove_marked(
        &mut self,
        level: usize,
        marks: &[(usize, bool)],
        now: Instant,
        dropped: &mut Vec<Dropped>,
    ) -> Vec<Pending> {
        let mut removed = Vec::with_capacity(marks.len());
        if marks.iter().enumerate().all(|(n, &(i, _))| n == i) {
            for &(_, keep) in marks {
                if let Some(p) = self.levels[level].pop_front() {
                    removed.push((p, keep));
                }
            }
        } else {
            let queue = std::mem::take(&mut self.levels[level]);
            let mut rest = VecDeque::with_capacity(queue.len().saturating_sub(marks.len()));
            let mut next = marks.iter().peekable();
            for (i, p) in queue.into_iter().enumerate() {
                match next.peek() {
                    Some(&&(at, keep)) if at == i => {
                        next.next();
                        removed.push((p, keep));
                    }
                    _ => rest.push_back(p),
                }
            }
            self.levels[level] = rest;
        }
        let mut taken = Vec::with_capacity(removed.len());
        for (p, keep) in removed {
            self.account_removed(&p);
            if keep {
                taken.push(p);
            } else if p.expired(now) {
                dropped.push(Dropped::Expired(p));
            } else {
                dropped.push(Dropped::Cancelled(p));
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tensor::Tensor;

    /// A pending request whose single input encodes its id; keeps its receiver alive.
    fn pending(
        id: usize,
        rows: usize,
        key: usize,
        priority: usize,
        now: Instant,
    ) -> (Pending, oneshot::Receiver<Result<NamedTensors>>) {
        let (tx, rx) = oneshot::channel();
        let t = Tensor::new([rows], vec![id as i64; rows]).expect("tensor");
        (
            Pending {
                inputs: vec![("x".into(), t)],
                rows,
                bytes: rows * 8,
                key: vec![key],
                enqueued: now,
                deadline: None,
                priority,
                reply: tx,
            },
            rx,
        )
    }

    fn id(p: &Pending) -> usize {
        p.inputs[0].1.as_slice::<i64>().expect("i64")[0] as usize
    }

    fn policy(max_rows: usize, preferred: Vec<usize>) -> Policy {
        Policy {
            batchable: true,
            max_rows,
            preferred,
            delay: Duration::ZERO,
            low_period: 4,
        }
    }

    #[test]
    fn cuts_at_the_largest_preferred_size_when_more_is_queued() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        let _rx: Vec<_> = (0..10)
            .map(|i| {
                let (p, rx) = pending(i, 1, 0, 0, now);
                q.push(p);
                rx
            })
            .collect();
        let mut dropped = Vec::new();
        let Take::Batch(b) = q.take(now, &policy(8, vec![2, 4, 6]), 1, &mut dropped) else {
            panic!("batch expected")
        };
        assert_eq!(
            b.len(),
            6,
            "10 queued, 8 fit: cut at the largest preferred size that fits"
        );
        assert_eq!(
            b.iter().map(id).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5],
            "oldest first"
        );
    }

    #[test]
    fn greedy_takes_everything_that_fits_when_nothing_is_left_over() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        let mut keep = Vec::new();
        for i in 0..5 {
            let (p, rx) = pending(i, 1, 0, 0, now);
            q.push(p);
            keep.push(rx);
        }
        let mut dropped = Vec::new();
        let Take::Batch(b) = q.take(now, &policy(8, vec![4]), 1, &mut dropped) else {
            panic!("batch expected")
        };
        assert_eq!(
            b.len(),
            5,
            "all queued fits: no cut at the preferred size, nothing waits for nothing"
        );
    }

    #[test]
    fn delay_holds_an_incomplete_batch_until_its_oldest_request_is_due() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        let (p, _rx) = pending(0, 1, 0, 0, now);
        q.push(p);
        let mut pol = policy(8, vec![4]);
        pol.delay = Duration::from_millis(5);
        let mut dropped = Vec::new();
        // However many instances are idle: the share of one queued row is one row, and that
        // must not count as a complete batch (it once did, and the delay never started).
        for idle in [1, 2, 8] {
            assert!(
                matches!(q.take(now, &pol, idle, &mut dropped), Take::WaitUntil(t) if t == now + pol.delay),
                "idle {idle}"
            );
        }
        assert!(
            matches!(q.take(now + pol.delay, &pol, 1, &mut dropped), Take::Batch(b) if b.len() == 1)
        );
    }

    #[test]
    fn a_request_of_another_shape_is_not_held_up_behind_a_waiting_batch() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        let mut keep = Vec::new();
        let (a, ra) = pending(0, 1, 7, 0, now);
        q.push(a);
        keep.push(ra);
        for i in 1..=4 {
            let (p, rx) = pending(i, 1, 9, 0, now);
            q.push(p);
            keep.push(rx);
        }
        let mut pol = policy(4, vec![]);
        pol.delay = Duration::from_secs(1);
        let mut dropped = Vec::new();
        let Take::Batch(b) = q.take(now, &pol, 1, &mut dropped) else {
            panic!("the lone request goes at once: another shape waits behind it")
        };
        assert_eq!(b.iter().map(id).collect::<Vec<_>>(), vec![0]);
        let Take::Batch(b) = q.take(now, &pol, 1, &mut dropped) else {
            panic!("a full batch never waits")
        };
        assert_eq!(b.len(), 4);
    }

    /// Takes batches until the queue is empty; the ids in the order they ran.
    fn run_order(q: &mut Queue, pol: &Policy) -> Vec<usize> {
        let (mut order, mut dropped) = (Vec::new(), Vec::new());
        while !q.is_empty() {
            let Take::Batch(b) = q.take(Instant::now(), pol, 1, &mut dropped) else {
                panic!("greedy policy must return a batch")
            };
            order.extend(b.iter().map(id));
        }
        order
    }

    #[test]
    fn a_lower_level_never_overtakes_an_older_request() {
        // Asking for a lower priority must never get a request served sooner than first come,
        // first served would: the low level's share goes to it only when its oldest request
        // has waited longer than the top level's oldest.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = Queue::new(2);
        let mut keep = Vec::new();
        for (i, prio, at) in [(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 5), (4, 0, 6)] {
            let (p, rx) = pending(i, 1, 0, prio, t0 + ms(at));
            q.push(p);
            keep.push(rx);
        }
        let mut pol = policy(1, vec![]);
        pol.low_period = 2;
        assert_eq!(run_order(&mut q, &pol), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn every_lower_level_gets_the_share_oldest_first() {
        // With three levels, the share goes to the lower level whose request has waited
        // longest, not always to the second level.
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = Queue::new(3);
        let mut keep = Vec::new();
        let mut push = |q: &mut Queue, i: usize, prio: usize, at: u64| {
            let (p, rx) = pending(i, 1, 0, prio, t0 + ms(at));
            q.push(p);
            keep.push(rx);
        };
        push(&mut q, 0, 2, 0);
        for i in 1..=4 {
            push(&mut q, i, 1, i as u64);
        }
        for i in 5..=8 {
            push(&mut q, i, 0, 10 + i as u64);
        }
        let mut pol = policy(1, vec![]);
        pol.low_period = 2;
        let order = run_order(&mut q, &pol);
        assert_eq!(&order[..2], &[5, 0], "{order:?}");
    }

    #[test]
    fn waiting_out_the_delay_does_not_use_up_the_low_priority_share() {
        let now = Instant::now();
        let mut q = Queue::new(2);
        let (h, _rh) = pending(0, 1, 0, 0, now);
        q.push(h);
        let (l, _rl) = pending(1, 1, 0, 1, now);
        q.push(l);
        let mut pol = policy(8, vec![]);
        pol.delay = Duration::from_millis(10);
        pol.low_period = 2;
        let mut dropped = Vec::new();
        for _ in 0..5 {
            assert!(matches!(
                q.take(now, &pol, 1, &mut dropped),
                Take::WaitUntil(_)
            ));
        }
        assert_eq!(q.since_low, 0, "looks that served no batch are not counted");
    }

    #[test]
    fn greedy_idle_instances_share_the_queue_but_a_delayed_batch_is_not_split() {
        let now = Instant::now();
        let fill = |q: &mut Queue, keep: &mut Vec<_>| {
            for i in 0..8 {
                let (p, rx) = pending(i, 1, 0, 0, now);
                q.push(p);
                keep.push(rx);
            }
        };
        let (mut keep, mut dropped) = (Vec::new(), Vec::new());
        let mut q = Queue::new(1);
        fill(&mut q, &mut keep);
        let Take::Batch(b) = q.take(now, &policy(8, vec![]), 2, &mut dropped) else {
            panic!("batch expected")
        };
        assert_eq!(b.len(), 4, "greedy: two idle instances take half each");

        let mut q = Queue::new(1);
        fill(&mut q, &mut keep);
        let mut pol = policy(8, vec![]);
        pol.delay = Duration::from_secs(1);
        let Take::Batch(b) = q.take(now, &pol, 2, &mut dropped) else {
            panic!("a full batch never waits")
        };
        assert_eq!(b.len(), 8, "with a delay, a full batch is one batch");
    }

    #[test]
    fn expired_and_cancelled_requests_are_pruned_not_run() {
        let now = Instant::now();
        let mut q = Queue::new(1);
        let (mut a, _ra) = pending(0, 1, 0, 0, now);
        a.deadline = Some(now);
        q.push(a);
        let (b, rb) = pending(1, 1, 0, 0, now);
        q.push(b);
        drop(rb);
        let (c, _rc) = pending(2, 1, 0, 0, now);
        q.push(c);
        let mut dropped = Vec::new();
        let Take::Batch(batch) = q.take(now, &policy(8, vec![]), 1, &mut dropped) else {
            panic!("batch expected")
        };
        assert_eq!(batch.iter().map(id).collect::<Vec<_>>(), vec![2]);
        assert!(matches!(dropped[0], Dropped::Expired(_)));
        assert!(matches!(dropped[1], Dropped::Cancelled(_)));
        assert!(q.is_empty() && q.bytes() == 0);
    }

    proptest! {
        /// Under any mix of sizes, buckets and three priority levels (requests arriving a
        /// microsecond apart, in order): nothing lost or duplicated, each batch within max
        /// rows and of one bucket and level, FIFO kept within a bucket and level, a lower
        /// level served within its bounded share whenever its oldest request is at least as
        /// old as the top level's, and never ahead of an older top-level request.
        #[test]
        fn batches_keep_every_invariant(
            reqs in proptest::collection::vec((1usize..=4, 0usize..3, 0usize..3), 1..120),
            max_rows in 4usize..=12,
            preferred in proptest::collection::vec(1usize..=4, 0..3),
        ) {
            let now = Instant::now();
            let mut q = Queue::new(3);
            let mut receivers = Vec::new();
            for (i, &(rows, key, prio)) in reqs.iter().enumerate() {
                let (p, rx) = pending(i, rows, key, prio, now + Duration::from_micros(i as u64));
                q.push(p);
                receivers.push(rx);
            }
            let pol = policy(max_rows, { let mut p = preferred.clone(); p.sort_unstable(); p.dedup(); p });
            let mut seen = vec![false; reqs.len()];
            let mut last_per_bucket = std::collections::HashMap::new();
            let mut high_streak = 0;
            let mut dropped = Vec::new();
            while !q.is_empty() {
                let top_front = q.levels[0].front().map(|p| p.enqueued);
                let low_front = q.levels[1..].iter().filter_map(|l| l.front().map(|p| p.enqueued)).min();
                let low_due = low_front.is_some_and(|l| top_front.is_none_or(|t| l <= t));
                let Take::Batch(b) = q.take(now, &pol, 1, &mut dropped) else { panic!("greedy policy must return a batch") };
                prop_assert!(!b.is_empty());
                let rows: usize = b.iter().map(|p| p.rows).sum();
                prop_assert!(rows <= max_rows, "batch of {} rows over {}", rows, max_rows);
                let (key, level) = (b[0].key.clone(), b[0].priority);
                for p in &b {
                    prop_assert_eq!(&p.key, &key);
                    prop_assert_eq!(p.priority, level);
                    let i = id(p);
                    prop_assert!(!seen[i], "request {} taken twice", i);
                    seen[i] = true;
                    let last = last_per_bucket.insert((level, key.clone()), i);
                    prop_assert!(last.is_none_or(|l| l < i), "FIFO broken in bucket");
                }
                if level > 0 {
                    prop_assert!(top_front.is_none_or(|t| b[0].enqueued <= t), "a lower level overtook an older request");
                }
                if level == 0 && low_due { high_streak += 1 } else { high_streak = 0 }
                prop_assert!(high_streak < pol.low_period, "low priority starved for {} batches", high_streak);
            }
            prop_assert!(dropped.is_empty());
            prop_assert!(seen.iter().all(|s| *s), "a request was lost");
        }
    }
}
