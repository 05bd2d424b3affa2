//! Dynamic batching: many concurrent callers, few model sessions, every caller getting
//! exactly its own rows back on time or a clear error.
//!
//! - [`config`]: batching, admission and lifecycle settings.
//! - [`request`]: [`InferRequest`] (inputs, deadline, priority).
//! - [`queue`](self): per-priority queues and the batch-formation rules (private).
//! - [`batcher`]: one model version's queue, instance threads and deadline timer.
//! - [`handle`]: a model across versions: states, hot swap, shutdown.
//! - [`backend`]: what an instance runs batches on.
//! - [`metrics`]: OpenTelemetry instruments.

pub mod backend;
pub mod batcher;
pub mod config;
pub mod handle;
pub mod metrics;
mod queue;
pub mod request;
mod stack;

pub use backend::Backend;
pub use batcher::{Batcher, BatcherSpec, BatcherStats};
pub use config::BatchConfig;
pub use handle::{Loaded, ModelHandle, ModelState, ModelStatus};
pub use metrics::Outcome;
pub use request::InferRequest;
