//! With feature `http`: generates the gRPC service code from `proto/inference.proto` with
//! protox (a protobuf compiler in Rust), so building needs no `protoc` and downloads nothing.
//! Without it there is nothing to generate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "http")]
    {
        println!("cargo:rerun-if-changed=proto/inference.proto");
        let files = protox::compile(["inference.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .build_client(false)
            .build_transport(false)
            // Raw tensor bytes stay `Bytes` slices of the received buffer: no copy per input.
            .bytes(".inference.ModelInferRequest.raw_input_contents")
            .bytes(".inference.ModelInferResponse.raw_output_contents")
            .compile_fds(files)?;
    }
    #[cfg(not(feature = "http"))]
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
