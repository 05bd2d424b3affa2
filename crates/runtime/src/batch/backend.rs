//! What an instance runs a batch on: an ONNX Runtime session in production, a fake in the
//! scheduler's tests.

use crate::error::Result;
use crate::model::{Model, NamedTensors};

/// Runs one already validated batch. Each instance owns one backend on its own thread, so
/// `run` takes `&mut self` and needs no lock.
pub trait Backend: Send + 'static {
    /// Runs `inputs` (in the model's input order) and returns every output in graph order.
    /// The inputs may be a caller's borrowed memory
    /// ([`ModelHandle::infer_view_blocking`](super::ModelHandle::infer_view_blocking)): keep no
    /// clone of them past the call (the caller waits until it is dropped).
    ///
    /// # Errors
    /// Whatever the backend reports; the batcher retries a failed batch request by request.
    fn run(&mut self, inputs: &NamedTensors) -> Result<NamedTensors>;
}

impl Backend for Model {
    fn run(&mut self, inputs: &NamedTensors) -> Result<NamedTensors> {
        // The batcher validated every request at admission; a stacked batch may exceed the
        // per-request element cap by design.
        self.run_validated(inputs)
    }
}
