//! The `GRPCInferenceService` calls. Each one is the REST endpoint's logic reached through a
//! different door: the same lookup, readiness, metadata, configuration, statistics, admin rule
//! and inference path (`crate::http::infer`), with errors mapped by `super::status`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::ConnectInfo;
use tonic::{Request, Response, Status};

use super::budget::Share;
use super::message::ModelInferMessage;
use super::pb;
use super::services::grpc_inference_service_server::GrpcInferenceService;
use super::{metered, status, stream, tensor};
use crate::http::error::ApiError;
use crate::http::infer;
use crate::http::json_fields::Classes;
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

/// A `ModelInfer` request that failed: its status, and what names the request (as far as it
/// was read), which a stream's answer carries so the client knows which request failed.
pub(super) struct Failure {
    pub(super) status: Status,
    pub(super) model: String,
    pub(super) version: String,
    pub(super) id: String,
}

impl Failure {
    /// A failure before anything naming the request was read.
    pub(super) fn unnamed(status: Status) -> Self {
        Self {
            status,
            model: String::new(),
            version: String::new(),
            id: String::new(),
        }
    }
}

/// One `ModelInfer` request, from either door (a unary call, or one message of a stream):
/// walked, decoded and made tensors in one go (on a decode thread for a big message, as for
/// a big REST body, holding its budget `share` until done), run within `timeout`, answered.
///
/// # Errors
/// The request's refusal or failure (logged as `infer::log_failure` does), with what names
/// the request as far as it was read.
pub(super) async fn infer_message(
    state: &AppState,
    message: ModelInferMessage,
    share: Option<Share>,
    timeout: Option<Duration>,
) -> Result<pb::ModelInferResponse, Failure> {
    let limits = state.decoder.limits();
    let big = message.len() >= crate::http::decode::INLINE_MAX_BYTES;
    // Raw contents and typed contents' vectors are moved, not copied.
    let unpack = move || {
        let unpacked = message.decode(limits).map(|r| {
            let timeout_us = u64_parameter(&r.parameters, "timeout");
            let priority = u64_parameter(&r.parameters, "priority");
            let inputs = tensor::inputs(r.inputs, r.raw_input_contents, limits);
            (
                r.model_name,
                r.model_version,
                r.id,
                r.outputs,
                inputs,
                (timeout_us, priority),
            )
        });
        drop(share);
        unpacked
    };
    let unpacked = if big {
        state.decoder.off_workers(unpack).await
    } else {
        Ok(unpack())
    };
    let (model, model_version, id, outputs, inputs, (timeout_us, priority)) = match unpacked {
        Ok(Ok(unpacked)) => unpacked,
        Ok(Err(refused)) => {
            let e = ApiError::from(refused.error);
            let id = (!refused.id.is_empty()).then_some(refused.id.as_str());
            infer::log_failure("grpc", &refused.model, version(&refused.version), id, &e);
            return Err(Failure {
                status: Status::from(e),
                model: refused.model,
                version: refused.version,
                id: refused.id,
            });
        }
        // A decode thread failed: nothing of the request was read.
        Err(e) => {
            infer::log_failure("grpc", "", None, None, &e);
            return Err(Failure::unnamed(Status::from(e)));
        }
    };
    let version = version(&model_version).map(str::to_owned);
    let id = (!id.is_empty()).then_some(id);
    let fail = |e: ApiError| {
        infer::log_failure("grpc", &model, version.as_deref(), id.as_deref(), &e);
        Failure {
            status: Status::from(e),
            model: model.clone(),
            version: model_version.clone(),
            id: id.clone().unwrap_or_default(),
        }
    };
    let call = infer::Call {
        model: &model,
        version: version.as_deref(),
        inputs: inputs.map_err(|e| fail(e.into()))?,
        outputs: outputs
            .into_iter()
            .map(|o| infer::Wanted {
                classes: classes_parameter(&o.parameters),
                name: o.name,
            })
            .collect(),
        timeout: infer::deadline(timeout, timeout_us),
        priority,
    };
    let answer = infer::run(state, call).await.map_err(fail)?;
    let (outputs, raw_output_contents) = answer
        .outputs
        .into_iter()
        .map(|(name, t)| tensor::output(name, &t))
        .unzip();
    Ok(pb::ModelInferResponse {
        model_name: model,
        model_version: answer.version,
        id: id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    })
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
        request: Request<ModelInferMessage>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let timeout = status::timeout(request.metadata())?;
        let share = request.extensions().get::<Share>().cloned();
        infer_message(&self.state, request.into_inner(), share, timeout)
            .await
            .map(Response::new)
            .map_err(|f| f.status)
    }

    type ModelStreamInferStream = stream::Responses;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferMessage>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let deadline = status::timeout(request.metadata())?.map(|t| Instant::now() + t);
        let shares = request
            .extensions()
            .get::<metered::Shares>()
            .cloned()
            .unwrap_or_default();
        let connection = crate::http::idle::Activity::of(request.extensions());
        Ok(Response::new(stream::serve(
            Arc::clone(&self.state),
            request.into_inner(),
            shares,
            deadline,
            connection,
        )))
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

/// A request's whole-number parameter: `timeout` (microseconds) comes from `tritonclient` as
/// an `int64_param`, `priority` as a `uint64_param`; either kind is read, a negative one or
/// one of another type is none.
fn u64_parameter(
    parameters: &std::collections::HashMap<String, pb::InferParameter>,
    name: &str,
) -> Option<u64> {
    whole_number(parameters.get(name)?)
}

/// An output's `classification` parameter: a whole number of classes ([`whole_number`]); any
/// other value is refused, as Triton refuses it, not taken for absent.
fn classes_parameter(
    parameters: &std::collections::HashMap<String, pb::InferParameter>,
) -> Option<Classes> {
    let given = parameters.get("classification")?;
    Some(Classes::of(whole_number(given)))
}

/// A parameter's value as a whole number: an `int64_param` of at least 0, or a
/// `uint64_param`.
fn whole_number(parameter: &pb::InferParameter) -> Option<u64> {
    match parameter.parameter_choice.as_ref()? {
        pb::infer_parameter::ParameterChoice::Int64Param(v) => u64::try_from(*v).ok(),
        pb::infer_parameter::ParameterChoice::Uint64Param(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::infer_parameter::ParameterChoice as P;

    #[test]
    fn a_classification_is_a_whole_number_or_refused() {
        let of = |choice: Option<P>| {
            classes_parameter(&std::collections::HashMap::from([(
                "classification".to_owned(),
                pb::InferParameter {
                    parameter_choice: choice,
                },
            )]))
        };
        assert_eq!(of(Some(P::Int64Param(3))), Some(Classes::Count(3)));
        assert_eq!(of(Some(P::Uint64Param(2))), Some(Classes::Count(2)));
        assert_eq!(of(Some(P::Int64Param(-1))), Some(Classes::Invalid));
        assert_eq!(of(Some(P::StringParam("3".into()))), Some(Classes::Invalid));
        assert_eq!(of(None), Some(Classes::Invalid));
        assert_eq!(classes_parameter(&Default::default()), None);
    }

    #[test]
    fn whole_number_parameters_are_read_from_int64_and_uint64() {
        let params = |choice: P| {
            std::collections::HashMap::from([(
                "priority".to_owned(),
                pb::InferParameter {
                    parameter_choice: Some(choice),
                },
            )])
        };
        assert_eq!(
            u64_parameter(&params(P::Uint64Param(2)), "priority"),
            Some(2)
        );
        assert_eq!(
            u64_parameter(&params(P::Int64Param(1500)), "priority"),
            Some(1500)
        );
        assert_eq!(u64_parameter(&params(P::Int64Param(-1)), "priority"), None);
        assert_eq!(
            u64_parameter(&params(P::DoubleParam(2.0)), "priority"),
            None
        );
        assert_eq!(u64_parameter(&params(P::Uint64Param(2)), "timeout"), None);
    }
}
