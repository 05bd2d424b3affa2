//! `grpc.health.v1`, what Kubernetes' gRPC probes and gRPC load balancers call. The service
//! `""` (and `inference.GRPCInferenceService`) is the server's readiness, the same rule as
//! `/v2/health/ready` (`--ready-when`, false while draining); a model's name is that model's
//! readiness. Computed at each call, never cached, so a probe cannot see a stale answer. A
//! `Watch` ends UNAVAILABLE when the listeners close, or when its connection closes (to give
//! way to a waiting client, `idle`, or at shutdown).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::http::idle::{self, Activity, Parked};
use crate::http::models::{model_is_ready, server_is_ready};
use crate::http::routes::AppState;

/// How often `Watch` looks for a change.
const WATCH_EVERY: Duration = Duration::from_millis(500);

pub(super) struct Health {
    state: Arc<AppState>,
}

impl Health {
    pub(super) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The status of `service`, or `None` for a service (model) this server does not know.
fn status(s: &AppState, service: &str) -> Option<ServingStatus> {
    let up = |ready: bool| {
        if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    match service {
        "" | "inference.GRPCInferenceService" => Some(up(server_is_ready(s))),
        model => model_is_ready(s, model, None).ok().map(up),
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

/// A watch's state between the statuses it sends.
struct Watching {
    /// The last status sent.
    last: Option<ServingStatus>,
    /// Held for the watch's life: it waits on nothing from its client.
    parked: Option<Parked>,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match status(&self.state, &service) {
            Some(s) => Ok(Response::new(answer(s))),
            None => Err(Status::not_found(format!("unknown service `{service}`"))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// The current status at once, then each change, until the client goes away or the
    /// listeners close ([`AppState::closing`]): then, its last status sent, the watch ends
    /// UNAVAILABLE, as open inference streams do, so that the connection can close and the
    /// client watches again elsewhere (it went on for as long as the connection's grace).
    /// A watch waits on nothing from its client: it is parked (`idle`) all along, and ends
    /// UNAVAILABLE too once its connection closes (to give way to a waiting client, or at
    /// shutdown).
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let connection = Activity::of(request.extensions());
        let service = request.into_inner().service;
        let state = Arc::clone(&self.state);
        let watching = Watching {
            last: None,
            parked: connection.as_ref().map(Activity::park),
        };
        // `None` once the watch has ended.
        let stream = futures::stream::unfold(Some(watching), move |watching| {
            let state = Arc::clone(&state);
            let service = service.clone();
            async move {
                let mut watching = watching?;
                loop {
                    let now = status(&state, &service).unwrap_or(ServingStatus::ServiceUnknown);
                    if watching.last != Some(now) {
                        watching.last = Some(now);
                        return Some((Ok(answer(now)), Some(watching)));
                    }
                    if state.closing.load(Ordering::Relaxed) {
                        let end = Status::unavailable("the server is shutting down: watch again");
                        return Some((Err(end), None));
                    }
                    let gave_way =
                        idle::streams_ended(watching.parked.as_ref().map(Parked::connection));
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_EVERY) => {}
                        () = gave_way => {
                            let end = Status::unavailable(
                                if state.closing.load(Ordering::Relaxed) {
                                    "the server is shutting down: watch again"
                                } else {
                                    "the server is closing this connection: watch again"
                                },
                            );
                            return Some((Err(end), None));
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
