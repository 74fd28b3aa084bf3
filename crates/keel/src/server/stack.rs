//! The per-request layers in front of a server's gRPC routes, and the task that serves
//! them on the gRPC listener (with the HTTP fallback when there is one).

use std::sync::Arc;

use tokio::sync::watch;
use tonic::service::Routes;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::fallback::{MakeFallback, Split};
use super::shutdown::MainListener;
use crate::config::ServerConfig;
use crate::layer::{
    AuthorizeLayer, CatchPanicLayer, DeadlineLayer, LoadShedLayer, MessageLimitLayer,
};
use crate::metrics::Metrics;
use crate::serving::{Listener, Stage};
use keel_telemetry::observe::{ObserveLayer, ServerObserver};

/// Starts serving `routes` behind Keel's layers on `listener`, in a task of its own.
pub(super) fn spawn(
    listener: Listener,
    config: &ServerConfig,
    routes: Routes,
    fallback: Option<MakeFallback>,
    metrics: &Metrics,
    observer: Arc<ServerObserver>,
    auth: Option<Arc<keel_authz::Auth>>,
) -> MainListener {
    let limits = &config.limits;
    let load_shed = LoadShedLayer::new(limits.concurrency_limit, metrics.shed_rpcs.clone());
    let limits = MessageLimitLayer::new(limits.max_recv_message_size, limits.max_send_message_size);
    let observe = if config.observe.enabled {
        ObserveLayer::new(observer)
    } else {
        ObserveLayer::disabled()
    };
    let catch_panic = CatchPanicLayer::new(metrics.panics.clone());
    let authorize = AuthorizeLayer::new(auth, metrics.auth.clone());
    // The deadline right inside observation, so every status it produces is observed;
    // enforced whether or not calls are observed. Authorization next: refusals are
    // observed, and a caller that may not call costs nothing further in.
    let layers = ServiceBuilder::new()
        .layer(observe)
        .layer(DeadlineLayer)
        .layer(authorize)
        .layer(limits)
        .layer(load_shed)
        .layer(catch_panic);
    let (stage, stage_rx) = watch::channel(Stage::Serving);
    let task = match fallback {
        None => tokio::spawn(listener.serve(layers.service(routes), stage_rx)),
        Some(make) => {
            // The fallback calls the same layers a gRPC request passes (not the per-request
            // tracking: the fallback's own request is tracked once, on its connection).
            let in_process = ServiceBuilder::new()
                .map_response(|response: http::Response<_>| response.map(tonic::body::Body::new))
                .layer(layers.clone())
                .service(routes.clone());
            let split = Split {
                grpc: layers.service(routes),
                fallback: make(BoxCloneSyncService::new(in_process)),
            };
            tokio::spawn(listener.serve(split, stage_rx))
        }
    };
    MainListener {
        name: GRPC,
        task,
        stage,
    }
}

/// The gRPC listener's name in metrics and logs.
pub(super) const GRPC: &str = "grpc";
