//! The admin HTTP endpoints: liveness, readiness and Prometheus metrics, served on their
//! own port by the serving core (its own connection budget keeps it answering while the
//! RPC port is saturated).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::health::HealthRegistry;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Admin {
    health: HealthRegistry,
    metrics: Arc<Metrics>,
}

/// The admin endpoints, as one service.
pub(crate) fn router(health: HealthRegistry, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(liveness))
        .route("/readyz", get(readiness))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .with_state(Admin { health, metrics })
}

/// The process is alive and its runtime answers.
async fn liveness() -> Response {
    axum::Json(json!({ "status": "alive" })).into_response()
}

/// 200 while the server reports SERVING, 503 from the start of shutdown on.
async fn readiness(State(admin): State<Admin>) -> Response {
    if admin.health.is_serving() {
        axum::Json(json!({ "status": "serving" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_serving" })),
        )
            .into_response()
    }
}

async fn render_metrics(State(admin): State<Admin>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({ "error": "not found", "endpoints": ["/healthz", "/readyz", "/metrics"] }),
        ),
    )
        .into_response()
}
