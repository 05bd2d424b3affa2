//! The `GRPCInferenceService` calls. Each one is the REST endpoint's logic reached through a
//! different door: the same lookup, readiness, metadata, configuration, statistics, admin rule
//! and inference path (`crate::http::infer`), with errors mapped by `super::status`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use tonic::{Request, Response, Status};

use super::pb::{self, grpc_inference_service_server::GrpcInferenceService};
use super::{status, tensor};
use crate::http::error::ApiError;
use crate::http::infer;
use crate::http::routes::AppState;

pub(super) struct Inference {
    state: Arc<AppState>,
}

impl Inference {
    pub(super) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// The admin rule of the REST repository endpoints, on the call's `authorization`
    /// metadata and peer address.
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        crate::http::admin::admit_admin(&self.state, authorization, peer).map_err(Status::from)
    }
}

/// An empty version field means "the serving one", as in the protocol.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: crate::http::models::server_is_ready(&self.state),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = crate::http::models::model_is_ready(&self.state, &r.name, version(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::http::models::EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let d = crate::http::models::describe(&self.state, &r.name, version(&r.version))?;
        let tensors = |ts: Vec<crate::http::protocol::TensorMetadata>| {
            ts.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype.to_owned(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: d.name,
            versions: d.versions,
            platform: d.platform.to_owned(),
            inputs: tensors(d.inputs),
            outputs: tensors(d.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let timeout = status::timeout(request.metadata())?;
        let r = request.into_inner();
        let model = r.model_name;
        let version = version(&r.model_version).map(str::to_owned);
        let id = (!r.id.is_empty()).then_some(r.id);
        let fail = |e: ApiError| {
            infer::log_failure("grpc", &model, version.as_deref(), id.as_deref(), &e);
            Status::from(e)
        };
        let max_elements = self.state.config.max_input_elements;
        let raw_len: usize = r.raw_input_contents.iter().map(|b| b.len()).sum();
        let (typed, raw) = (r.inputs, r.raw_input_contents);
        // Big raw contents become tensors on a decode thread, as big REST bodies do (typed
        // contents are already decoded by prost: their conversion moves the vectors).
        let inputs = if raw_len >= crate::http::decode::INLINE_MAX_BYTES {
            self.state
                .decoder
                .off_workers(move || tensor::inputs(typed, raw, max_elements))
                .await
                .map_err(fail)?
        } else {
            tensor::inputs(typed, raw, max_elements)
        }
        .map_err(|e| fail(e.into()))?;
        let call = infer::Call {
            model: &model,
            version: version.as_deref(),
            inputs,
            outputs: r.outputs.into_iter().map(|o| o.name).collect(),
            timeout,
        };
        let answer = infer::run(&self.state, call).await.map_err(fail)?;
        let (outputs, raw_output_contents) = answer
            .outputs
            .into_iter()
            .map(|(name, t)| tensor::output(name, &t))
            .unzip();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: model,
            model_version: answer.version.unwrap_or_default(),
            id: id.unwrap_or_default(),
            parameters: Default::default(),
            outputs,
            raw_output_contents,
        }))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let config = crate::http::model_config::config(&self.state, &r.name, version(&r.version))?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let model_stats = crate::http::stats::statistics(
            &self.state,
            (!r.name.is_empty()).then_some(r.name.as_str()),
            version(&r.version),
        )?;
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        let models = crate::http::stats::index(&self.state, r.ready);
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.admin(&request)?;
        crate::http::admin::load_model(&self.state, request.into_inner().model_name).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.admin(&request)?;
        crate::http::admin::unload_model(&self.state, request.into_inner().model_name).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
