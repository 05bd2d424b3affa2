//! The Open Inference Protocol over gRPC: KServe's `GRPCInferenceService` with Triton's
//! model configuration, statistics and repository calls (`proto/inference.proto`), and
//! `grpc.health.v1` for Kubernetes gRPC probes, so `tritonclient.grpc`, the Go and C++ clients
//! and gRPC health checkers talk to kiln as they talk to Triton.
//!
//! The services are an axum `Router` ([`router`]) served by the same accept loop as REST
//! ([`mod@crate::http::serve`]: connection cap, header timeout, graceful drain), on their own port
//! (`--grpc-listen`, 8001 like Triton's). Requests take the same inference path as REST
//! (`crate::http::infer`), the same limits and the same error rule, mapped to gRPC codes in
//! [`status`].
//!
//! # Layout
//! - [`pb`]: the generated messages; `services` (private): the generated service trait.
//! - `message` (private): `ModelInfer`'s request, walked and decoded off the workers.
//! - `service` (private): the calls.
//! - `stream` (private): `ModelStreamInfer`, the same inference path over one stream.
//! - `tensor` (private): typed contents and raw contents to and from kiln tensors.
//! - [`status`]: errors to gRPC status codes; `grpc-timeout` to a deadline.
//! - `health` (private): `grpc.health.v1`.
//! - `budget` (private): big messages within the REST decoder's memory budget, and within
//!   `--body-timeout-s`.
//! - `metered` (private): a stream's messages within that budget and `--body-timeout-s`, as
//!   they arrive.
//! - `compressed` (private): gzip and deflate messages inflated within that budget, off the
//!   workers, before tonic reads them.
//! - `metrics` (private): `kiln_grpc_requests_total` and `kiln_grpc_request_duration_seconds`.

use std::sync::Arc;

use crate::http::routes::AppState;

mod budget;
mod compressed;
mod health;
mod message;
mod metered;
pub(crate) mod metrics;
mod service;
pub mod status;
mod stream;
mod tensor;

/// The messages generated from `proto/inference.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// The service trait and server generated from `proto/inference.proto`, on [`pb`]'s
/// messages but for `ModelInfer`'s request, a [`message::ModelInferMessage`].
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod services {
    include!(concat!(env!("OUT_DIR"), "/services/inference.rs"));
}

/// The gRPC services for `state` as a router for [`crate::http::serve()`].
pub fn router(state: Arc<AppState>) -> axum::Router {
    let limit = state.config.max_body_bytes;
    let inference = services::grpc_inference_service_server::GrpcInferenceServiceServer::new(
        service::Inference::new(Arc::clone(&state)),
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let health =
        tonic_health::pb::health_server::HealthServer::new(health::Health::new(Arc::clone(&state)));
    tonic::service::Routes::new(inference)
        .add_service(health)
        .into_axum_router()
        .layer(axum::middleware::from_fn(
            crate::http::unserved::explain_unimplemented,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            budget::reserve,
        ))
        .layer(axum::middleware::map_response(
            oversized_is_resource_exhausted,
        ))
        // Outermost: counts every answer as the client gets it.
        .layer(axum::middleware::from_fn_with_state(state, metrics::record))
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE; gRPC's own
/// implementations (and so clients' retry and alerting rules) use RESOURCE_EXHAUSTED, the
/// code REST's 413 maps to here. The refusal is a trailers-only response, so its status is
/// in the headers.
async fn oversized_is_resource_exhausted(
    mut response: axum::response::Response,
) -> axum::response::Response {
    let h = response.headers();
    let oversized = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            // Percent-encoded, as gRPC sends messages.
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if oversized {
        response.headers_mut().insert(
            "grpc-status",
            axum::http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response
}
