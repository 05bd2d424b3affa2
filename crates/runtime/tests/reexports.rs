//! The crates whose types stand in kiln's public signatures are named through kiln itself, so
//! a caller needs no dependency of its own (and no version to keep in step) to write them down.

#[test]
fn public_signature_types_are_named_through_kiln() {
    type Answer = kiln::tokio::sync::oneshot::Receiver<kiln::Result<kiln::NamedTensors>>;
    let _submit: fn(&kiln::ModelHandle, kiln::InferRequest) -> kiln::Result<Answer> =
        kiln::ModelHandle::submit;
    let _meter: fn(&'static str) -> kiln::otel::metrics::Meter = kiln::otel::global::meter;
    let half = kiln::half::f16::from_f32(0.5);
    let _array: kiln::Tensor = kiln::ndarray::Array2::from_elem((1, 2), half).into();
    #[cfg(feature = "http")]
    {
        let _listener: Option<kiln::tokio::net::TcpListener> = None;
        let _code: fn(kiln::http::axum::http::StatusCode) -> kiln::http::tonic::Code =
            kiln::http::grpc::status::code;
        let request = kiln::http::grpc::pb::ServerLiveRequest::default();
        let _bytes = kiln::http::prost::Message::encode_to_vec(&request);
    }
}
