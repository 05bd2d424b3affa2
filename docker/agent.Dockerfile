# syntax=docker/dockerfile:1
# kiln-agent image: multi-stage, a distroless runtime image, non-root. The agent needs no
# ONNX Runtime. Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t kiln-agent:0.1.0 .
FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kiln-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kiln-agent /usr/local/bin/kiln-agent
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/kiln-agent"]
CMD ["run", "--config", "/etc/kiln/agent.yaml"]
