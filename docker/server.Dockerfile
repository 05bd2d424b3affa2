# syntax=docker/dockerfile:1
# kiln-server image with ONNX Runtime from the pinned PyPI wheels (sha256 checked by
# scripts/fetch-ort.sh). Two final stages:
#   docker build -f docker/server.Dockerfile --target cpu -t kiln-server:0.1.0-cpu .
#   docker build -f docker/server.Dockerfile --target gpu -t kiln-server:0.1.0-gpu .
FROM rust:1.92-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kiln-example-server

FROM build AS ort-cpu
RUN scripts/fetch-ort.sh cpu

FROM build AS ort-gpu
RUN scripts/fetch-ort.sh gpu

FROM gcr.io/distroless/cc-debian12:nonroot AS cpu
COPY --from=build /src/target/release/kiln-server /usr/local/bin/kiln-server
COPY --from=ort-cpu /src/.cache/ort/cpu/ /opt/onnxruntime/
ENV KILN_ORT_DIR=/opt/onnxruntime
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/kiln-server"]
CMD ["--root", "/models"]

# CUDA 13 runtime with cuDNN 9, as onnxruntime-gpu 1.31 expects.
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS gpu
COPY --from=build /src/target/release/kiln-server /usr/local/bin/kiln-server
COPY --from=ort-gpu /src/.cache/ort/gpu/ /opt/onnxruntime/
ENV KILN_ORT_DIR=/opt/onnxruntime
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/kiln-server"]
CMD ["--root", "/models", "--device", "cuda"]
