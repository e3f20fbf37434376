//! The admin HTTP API (only with `--admin ADDR`): `/metrics`, `/healthz`,
//! `/readyz`, `GET /pipelines`, `POST /pipelines/{name}/reload`,
//! `POST /pipelines/{name}/promote` (the running canary). Requests
//! that change anything need `Authorization: Bearer <token>` when a token is
//! configured.
//!
//! A client is untrusted: at most [`MAX_CONNECTIONS`] connections are served
//! at once (more wait in the listen backlog, holding no descriptor of ours),
//! a request's headers must arrive within [`HEADER_TIMEOUT`], and a
//! connection lasts at most [`CONNECTION_TIMEOUT`], so silent or slow
//! clients cannot hold the process's descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::supervisor::Registry;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers (also while a kept-alive
/// connection waits for its next request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

struct Admin {
    registry: Arc<Registry>,
    token: Option<String>,
}

/// Binds `addr` now (so a bad address fails at start) and serves the API in
/// a background task until the process ends. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    token: Option<String>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--admin {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() && token.is_none() {
        tracing::warn!(
            "admin API on {bound} (not loopback) without a token: anyone who reaches it can reload plugins"
        );
    }
    let app = router(Arc::new(Admin { registry, token }));
    tokio::spawn(accept(listener, app));
    tracing::info!("admin API on http://{bound}");
    Ok(bound)
}

/// Serves connections until the process ends, within the bounds above.
async fn accept(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("admin API cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn router(state: Arc<Admin>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{name}/reload", post(reload))
        .route("/pipelines/{name}/promote", post(promote))
        .with_state(state)
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&a.registry),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(a): State<Arc<Admin>>) -> Response {
    let not_ready = a.registry.not_ready();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "pipelines": not_ready })),
        )
            .into_response()
    }
}

async fn pipelines(State(a): State<Arc<Admin>>) -> Response {
    let list: Vec<serde_json::Value> = a.registry.pipelines().iter().map(|h| h.info()).collect();
    let invalid: Vec<serde_json::Value> = a
        .registry
        .invalid_files()
        .into_iter()
        .map(|(file, errors)| json!({ "file": file, "errors": errors }))
        .collect();
    axum::Json(json!({ "pipelines": list, "invalid_files": invalid })).into_response()
}

async fn reload(
    State(a): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&a, &headers) {
        return r;
    }
    let Some(h) = a.registry.get(&name) else {
        return no_pipeline(&name);
    };
    match h.reload().await {
        Ok(p) => axum::Json(json!({
            "pipeline": name,
            "digest": p.digest(),
            "loaded_at": humantime::format_rfc3339_millis(p.loaded_at()).to_string(),
        }))
        .into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "pipeline": name, "error": e })),
        )
            .into_response(),
    }
}

async fn promote(
    State(a): State<Arc<Admin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&a, &headers) {
        return r;
    }
    let Some(h) = a.registry.get(&name) else {
        return no_pipeline(&name);
    };
    match h.promote() {
        Ok(digest) => axum::Json(json!({ "pipeline": name, "promoted": digest })).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            axum::Json(json!({ "pipeline": name, "error": e.to_string() })),
        )
            .into_response(),
    }
}

fn no_pipeline(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": format!("no pipeline named {name:?}") })),
    )
        .into_response()
}

/// Checks the bearer token when one is configured.
#[allow(clippy::result_large_err)]
fn authorize(a: &Admin, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &a.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110); the token is not.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({ "error": "a valid bearer token is required" })),
        )
            .into_response()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the admin token: `--admin-token-file`, else `$SLUICE_ADMIN_TOKEN`.
/// Surrounding whitespace is ignored; an empty token is an error.
pub fn load_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let raw = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--admin-token-file {}", f.display()))?,
        ),
        None => std::env::var("SLUICE_ADMIN_TOKEN").ok(),
    };
    match raw.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => anyhow::bail!("the admin token is empty"),
        t => Ok(t),
    }
}
