//! A request to a served model: inputs plus scheduling hints.

use std::time::{Duration, Instant};

use crate::model::NamedTensors;

/// One inference request over inputs `I`: owned tensors ([`InferRequest`]) or views borrowed
/// from the caller ([`ViewRequest`]); the scheduling hints are the same for both.
#[derive(Debug, Clone)]
pub struct RequestOf<I> {
    /// Named input tensors; dim 0 holds the request's rows.
    pub inputs: I,
    /// Latest time to start running; past it the request fails with `DeadlineExceeded`. It can
    /// only shorten the model's `default_timeout_ms`, never extend it.
    pub deadline: Option<Instant>,
    /// Priority level, 0 the highest. Default 0.
    pub priority: usize,
}

/// One inference request over owned tensors.
pub type InferRequest = RequestOf<NamedTensors>;

/// An inference request over inputs borrowed from the caller, for
/// [`ModelHandle::infer_view_blocking`](super::ModelHandle::infer_view_blocking).
pub type ViewRequest<'a> = RequestOf<Vec<(String, crate::borrowed::TensorView<'a>)>>;

impl<I> RequestOf<I> {
    /// A request with these inputs, no deadline of its own, priority 0.
    pub fn new(inputs: I) -> Self {
        Self {
            inputs,
            deadline: None,
            priority: 0,
        }
    }

    /// Sets a deadline `timeout` from now.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// Sets an absolute deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the priority level (0 is the highest).
    pub fn with_priority(mut self, priority: usize) -> Self {
        self.priority = priority;
        self
    }
}

impl From<NamedTensors> for InferRequest {
    fn from(inputs: NamedTensors) -> Self {
        Self::new(inputs)
    }
}
