//! Admission: a request is validated against the signature, checked against the queue's
//! limits and queued, or refused at once with a typed error. Nothing is queued that does not
//! fit the model's signature or the limits: wrong names, types or ranks, too many rows or
//! bytes (a zero dim counted as one), a priority out of range. A full queue is `Overloaded` with a retry hint from the recent drain rate.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Outcome;
use super::queue::Pending;
use super::request::InferRequest;
use super::shared::{lock, Shared, State};
use crate::error::{Error, Result};
use crate::model::NamedTensors;

/// Where the caller's answer arrives.
pub(crate) type Answer = oneshot::Receiver<Result<NamedTensors>>;

impl Shared {
    /// Validates and enqueues a request; the receiver gets the answer.
    ///
    /// # Errors
    /// Validation errors, [`Error::BatchTooLarge`], [`Error::RequestTooLarge`],
    /// [`Error::InvalidPriority`], [`Error::Overloaded`], [`Error::Unavailable`].
    pub(crate) fn submit(&self, request: InferRequest) -> Result<Answer> {
        let refuse = |e: Error| {
            self.metrics.outcome(Outcome::of(&e), None);
            Err(e)
        };
        let now = Instant::now();
        let (pending, rx) = match self.admissible(request, now) {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        let mut dropped = Vec::new();
        let admitted = {
            let mut st = lock(&self.state);
            if !st.accepting || st.broken.is_some() {
                let state = match &st.broken {
                    Some(reason) => format!("failed: {reason}"),
                    None => "not accepting (draining or stopped)".into(),
                };
                Err(Error::Unavailable {
                    model: self.model.clone(),
                    state,
                })
            } else {
                if self.full(&st, pending.bytes) {
                    st.queue.expire(now, &mut dropped);
                }
                if self.full(&st, pending.bytes) {
                    st.stats.overloaded += 1;
                    Err(self.overloaded(&st))
                } else {
                    let wake_timer = pending
                        .deadline
                        .is_some_and(|d| st.timer_at.is_none_or(|t| d < t));
                    st.queue.push(pending);
                    self.mirror_depth(&st);
                    if wake_timer {
                        self.timer.notify_one();
                    }
                    Ok(st.sleeping > 0)
                }
            }
        };
        self.finish_dropped(dropped);
        match admitted {
            Ok(wake) => {
                if wake {
                    self.work.notify_one();
                }
                Ok(rx)
            }
            Err(e) => refuse(e),
        }
    }

    /// Everything checked before the lock is taken: the request as the queue holds it.
    fn admissible(&self, request: InferRequest, now: Instant) -> Result<(Pending, Answer)> {
        let levels = self.settings.config.priority_levels;
        if request.priority >= levels {
            return Err(Error::InvalidPriority {
                model: self.model.clone(),
                priority: request.priority,
                levels,
            });
        }
        let rows = self
            .metadata
            .validate(&request.inputs, self.max_input_elements)?;
        let policy = &self.settings.policy;
        if policy.batchable && rows > policy.max_rows {
            return Err(Error::BatchTooLarge {
                model: self.model.clone(),
                rows,
                max: policy.max_rows,
            });
        }
        let mut by_name = request.inputs;
        let mut inputs = Vec::with_capacity(by_name.len());
        for info in &self.metadata.inputs {
            if let Some(pos) = by_name.iter().position(|(n, _)| n == &info.name) {
                inputs.push(by_name.swap_remove(pos));
            }
        }
        // What the queue holds: strings count their `String`s, not their text alone.
        let bytes: usize = inputs.iter().map(|(_, t)| t.memory_len()).sum();
        let limit = self.settings.config.max_queue_bytes;
        if bytes > limit {
            return Err(Error::RequestTooLarge {
                model: self.model.clone(),
                bytes,
                limit,
            });
        }
        let key = self.bucket(&inputs);
        let default_deadline = self.settings.default_timeout.map(|t| now + t);
        let deadline = match (request.deadline, default_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            inputs,
            rows,
            bytes,
            key,
            enqueued: now,
            deadline,
            priority: request.priority,
            reply: tx,
        };
        Ok((pending, rx))
    }

    /// The shape bucket: every non-batch dim, except the padded one (any length batches),
    /// and whether the request has no rows. A request of no rows batches only with others of
    /// none, so it runs as it would alone: stacked beside rows, it would get an empty slice of
    /// their answer where a model that cannot run no rows fails it alone.
    fn bucket(&self, inputs: &NamedTensors) -> Vec<usize> {
        let padded = self.settings.padding.as_ref().map(|p| (p.input, p.dim));
        let no_rows = inputs.first().and_then(|(_, t)| t.shape().first()) == Some(&0);
        std::iter::once(usize::from(no_rows))
            .chain(inputs.iter().enumerate().flat_map(|(i, (_, t))| {
                t.shape()
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(move |(d, &v)| if padded == Some((i, d)) { 0 } else { v })
                    .chain([usize::MAX])
            }))
            .collect()
    }

    fn full(&self, st: &State, bytes: usize) -> bool {
        let c = &self.settings.config;
        st.queue.len() >= c.max_queue_requests || st.queue.bytes() + bytes > c.max_queue_bytes
    }

    fn overloaded(&self, st: &State) -> Error {
        let queued = st.queue.len();
        let rate = st.drain_rate;
        let retry_after = if rate > 0.0 {
            Duration::from_secs_f64((queued as f64 / rate).clamp(0.001, 60.0))
        } else {
            Duration::from_secs(1)
        };
        Error::Overloaded {
            model: self.model.clone(),
            queued_requests: queued,
            queued_bytes: st.queue.bytes(),
            retry_after,
        }
    }
}
