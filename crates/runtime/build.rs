//! With feature `http`: generates the gRPC service code from `proto/inference.proto` with
//! protox (a protobuf compiler in Rust), so building needs no `protoc` and downloads nothing.
//! Without it there is nothing to generate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "http")]
    {
        println!("cargo:rerun-if-changed=proto/inference.proto");
        let files = protox::compile(["inference.proto"], ["proto"])?;
        // The messages (`pb`).
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(false)
            .build_transport(false)
            // Raw tensor bytes stay `Bytes` slices of the received buffer: no copy per input.
            .bytes(".inference.ModelInferRequest.raw_input_contents")
            .bytes(".inference.ModelInferResponse.raw_output_contents")
            .compile_fds(files.clone())?;
        // The services, on those messages, but for `ModelInfer`'s request: the server keeps
        // it as received and decodes it itself (`http::grpc::message`).
        let services = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("services");
        std::fs::create_dir_all(&services)?;
        tonic_prost_build::configure()
            .build_client(false)
            .build_transport(false)
            .out_dir(&services)
            .extern_path(".inference", "crate::http::grpc::pb")
            .extern_path(
                ".inference.ModelInferRequest",
                "crate::http::grpc::message::ModelInferMessage",
            )
            .compile_fds(files)?;
    }
    #[cfg(not(feature = "http"))]
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
