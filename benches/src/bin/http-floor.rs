//! `http-floor`: kiln's HTTP stack with nothing behind it, the ceiling `make bench-server-ab`
//! puts beside kiln-server's REST rate.
//!
//! ```text
//! http-floor 127.0.0.1:PORT ANSWER_FILE
//! ```
//! Serves through the same accept loop (`kiln::http::serve`: hyper's HTTP/1.1 with kiln's
//! timeouts and connection cap) on a default multi-threaded tokio runtime, as kiln-server
//! does. `POST /v2/models/{model}/infer` reads the whole body and answers the bytes of
//! ANSWER_FILE (kiln-server's own answer to the benchmark's request) as JSON; `GET
//! /v2/models/{model}/ready` answers 200. No decoding, no model, no hand-off: what one request costs
//! in the HTTP exchange alone, on the same cores as the load generator. Runs until killed.

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};
use axum::Router;
use kiln::http::{serve, ServeOptions};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(answer)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: http-floor LISTEN ANSWER_FILE");
    };
    let answer = Bytes::from(std::fs::read(&answer).with_context(|| format!("read {answer}"))?);
    let app = Router::new()
        .route("/v2/models/{model}/ready", get(|| async {}))
        .route(
            "/v2/models/{model}/infer",
            post(move |body: Bytes| {
                let answer = answer.clone();
                async move {
                    drop(body);
                    ([(header::CONTENT_TYPE, "application/json")], answer)
                }
            }),
        );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("bind {listen}"))?;
            serve(
                listener,
                app,
                ServeOptions::default(),
                std::future::pending(),
            )
            .await;
            Ok(())
        })
}
