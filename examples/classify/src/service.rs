//! The service's app: its own route, `POST /classify` (a file's raw bytes in, its content type
//! out), beside the Open Inference Protocol router `kiln::http` provides for the same
//! repository (`/v2/...`, `/metrics`), all under the service's own middleware.
//!
//! `/classify` pre-processes the bytes into magika's input and runs it through the model's
//! [`ModelHandle`](kiln::ModelHandle), so concurrent requests are batched with `/v2` inference
//! on the same model; its errors are `kiln::http`'s ([`ApiError`]: 404 unknown model, 429
//! overloaded, 503 not serving, 504 past the deadline).

use std::sync::Arc;
use std::time::Duration;

use kiln::http::axum::body::Bytes;
use kiln::http::axum::extract::State;
use kiln::http::axum::http::HeaderValue;
use kiln::http::axum::response::Response;
use kiln::http::axum::routing::post;
use kiln::http::axum::{middleware, Json, Router};
use kiln::http::{ApiError, AppState};
use kiln::{InferRequest, Tensor};

use crate::magika::{Magika, Verdict, INPUT};

/// The header the service's middleware puts on every answer, its own routes' and the mounted
/// router's alike.
pub const SERVED_BY: &str = "x-served-by";

/// What `/classify` needs besides the protocol's state.
pub struct Classify {
    /// The protocol's state: the repository, limits, draining flag.
    pub state: Arc<AppState>,
    /// The model's configuration.
    pub magika: Magika,
    /// The model's name in the repository.
    pub model: String,
    /// Deadline of one classification (queue wait and run).
    pub timeout: Duration,
}

/// The app: `POST /classify` and `kiln::http::router`, with the service's middleware.
pub fn app(classify: Arc<Classify>) -> Router {
    let limit = classify.state.config.max_body_bytes;
    let own = Router::new()
        .route("/classify", post(classify_bytes))
        .layer(kiln::http::axum::extract::DefaultBodyLimit::max(limit))
        .with_state(Arc::clone(&classify));
    own.merge(kiln::http::router(Arc::clone(&classify.state)))
        .layer(middleware::map_response(served_by))
}

/// The service's own middleware: names itself on every answer.
async fn served_by(mut response: Response) -> Response {
    response.headers_mut().insert(
        SERVED_BY,
        HeaderValue::from_static(concat!("kiln-classify-service/", env!("CARGO_PKG_VERSION"))),
    );
    response
}

/// `POST /classify`: the body is the file.
async fn classify_bytes(
    State(c): State<Arc<Classify>>,
    body: Bytes,
) -> Result<Json<Verdict>, ApiError> {
    if body.is_empty() {
        return Ok(Json(Magika::empty()));
    }
    let handle = c.state.repo.get(&c.model).ok_or_else(|| {
        ApiError::not_found(format!("model `{}` is not in the repository", c.model))
    })?;
    let input = Tensor::new([1, c.magika.width()], c.magika.features(&body))?;
    let request = InferRequest::new(vec![(INPUT.to_owned(), input)]).with_timeout(c.timeout);
    let outputs = handle.infer(request).await?;
    let internal =
        |m: String| ApiError::new(kiln::http::axum::http::StatusCode::INTERNAL_SERVER_ERROR, m);
    let (_, scores) = outputs
        .first()
        .ok_or_else(|| internal("the model answered no output".to_owned()))?;
    let scores = scores.as_slice::<f32>()?;
    c.magika
        .verdict(scores)
        .map(Json)
        .map_err(|e| internal(format!("{e:#}")))
}
