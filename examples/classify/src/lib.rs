//! The magika content-type example, two ways over one model: `kiln-classify`, a command line
//! that loads the model itself, and `kiln-classify-service`, an HTTP service of its own that
//! mounts `kiln::http`'s Open Inference Protocol router beside its own `POST /classify` route,
//! which pre-processes a file's raw bytes into the model's input.
//!
//! # Layout
//! - [`magika`]: the model's configuration, pre-processing and answer.
//! - `features` (private): the byte tokens magika reads.
//! - [`service`]: the service's app — its route, the mounted router, its middleware.

mod features;
pub mod magika;
pub mod service;
