//! The admin HTTP endpoints: liveness, readiness and Prometheus metrics, served on their
//! own port by the serving core (its own connection budget keeps it answering while the
//! RPC port is saturated).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::metrics::{Format, Metrics};
use keel_health::{HealthRegistry, ReadinessStatus};

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

/// 200 while the server reports SERVING (status `serving`, or `degraded` while a degraded
/// check fails), 503 while it does not (a critical check fails, or shutdown began), with every
/// readiness check's last outcome:
/// `{"status":"not_serving","checks":{"database":{"status":"failing","impact":"critical","error":"..."}}}`.
async fn readiness(State(admin): State<Admin>) -> Response {
    let readiness = admin.health.readiness();
    let checks: serde_json::Map<String, serde_json::Value> = readiness
        .checks
        .into_iter()
        .map(|check| {
            let result = match check.error {
                None => json!({ "status": "passing", "impact": check.impact.as_str() }),
                Some(error) => json!({
                    "status": "failing",
                    "impact": check.impact.as_str(),
                    "error": error,
                }),
            };
            (check.name, result)
        })
        .collect();
    let code = match readiness.status {
        ReadinessStatus::NotServing => StatusCode::SERVICE_UNAVAILABLE,
        ReadinessStatus::Serving | ReadinessStatus::Degraded => StatusCode::OK,
    };
    let body = json!({ "status": readiness.status.as_str(), "checks": checks });
    (code, axum::Json(body)).into_response()
}

/// The metrics in the format the `Accept` header asks for (`metrics/format.rs`): OpenMetrics
/// for Prometheus, text 0.0.4 for everything else.
async fn render_metrics(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let format = Format::negotiate((!accept.is_empty()).then(|| accept.join(",")).as_deref());
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        admin.metrics.render_as(format),
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
