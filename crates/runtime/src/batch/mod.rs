//! Dynamic batching: many concurrent callers, few model sessions, every caller getting
//! exactly its own rows back on time or a clear error.
//!
//! One idea per module:
//! - [`config`]: batching, admission and lifecycle settings; `settings` (private) is the same
//!   checked once against the model's signature.
//! - [`request`]: [`InferRequest`] (inputs, deadline, priority).
//! - [`handle`]: [`ModelHandle`], the one public handle: a model across versions (states,
//!   hot swap, shutdown).
//! - `batcher` (private): one model version's threads, start, drain and stop.
//! - `shared` (private): the state the callers, instances and timer share, and its lock.
//! - `admit` (private): validation and admission into the queue.
//! - `queue` (private): per-priority queues and the batch-formation rules.
//! - `wait` (private): the caller's wait for its answer, sync and async.
//! - `worker` (private): an instance thread taking, running and answering batches.
//! - `timer` (private): the deadline timer.
//! - `stack`, `pad` (private): joining a batch and splitting it back, pure.
//! - `warmup` (private): warm-up batches before Ready.
//! - [`backend`]: what an instance runs batches on.
//! - [`metrics`]: OpenTelemetry instruments, once per model.

mod admit;
pub mod backend;
mod batcher;
pub mod config;
pub mod handle;
pub mod metrics;
mod pad;
mod queue;
pub mod request;
mod settings;
mod shared;
mod stack;
mod timer;
mod wait;
mod warmup;
mod worker;

pub use backend::Backend;
pub use batcher::BatcherSpec;
pub use config::BatchConfig;
pub use handle::{Answered, Loaded, ModelHandle, ModelState, ModelStatus};
pub use metrics::Outcome;
pub use request::{InferRequest, RequestOf, ViewRequest};
pub use shared::BatcherStats;
