//! The grpc.health.v1.Health service over a [`HealthRegistry`].

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::pb::health_check_response::ServingStatus as Wire;
use super::pb::health_server::{Health, HealthServer};
use super::pb::{HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse};
use super::registry::{HealthRegistry, ServingStatus};

/// Most services `List` returns before failing with RESOURCE_EXHAUSTED, per the protocol.
const LIST_LIMIT: usize = 100;

/// Serves `Check`, `Watch` and `List` from a registry.
#[derive(Debug, Clone)]
pub struct HealthService {
    registry: HealthRegistry,
}

impl HealthService {
    /// A service answering from `registry`.
    pub fn new(registry: HealthRegistry) -> Self {
        Self { registry }
    }

    /// The tonic service to register on a server.
    pub fn into_service(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }
}

fn wire(status: Option<ServingStatus>) -> Wire {
    match status {
        Some(ServingStatus::Serving) => Wire::Serving,
        Some(ServingStatus::NotServing) => Wire::NotServing,
        None => Wire::ServiceUnknown,
    }
}

fn response(status: Wire) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.registry.get(&service) {
            Some(status) => Ok(Response::new(response(wire(Some(status))))),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let snapshot = self.registry.snapshot();
        if snapshot.len() > LIST_LIMIT {
            return Err(Status::resource_exhausted(format!(
                "{} services exceed the List limit of {LIST_LIMIT}",
                snapshot.len()
            )));
        }
        let statuses = snapshot
            .iter()
            .map(|(name, status)| (name.clone(), response(wire(Some(*status)))))
            .collect();
        Ok(Response::new(HealthListResponse { statuses }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let (statuses, ended) = self.registry.subscribe();
        let state = (statuses, ended, service, None::<Wire>, false);
        let stream = futures_util::stream::unfold(
            state,
            |(mut statuses, mut ended, service, last, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if *ended.borrow_and_update() {
                        let status = Status::unavailable("server is shutting down");
                        return Some((Err(status), (statuses, ended, service, last, true)));
                    }
                    let current = wire(statuses.borrow_and_update().get(&service).copied());
                    if last != Some(current) {
                        let item = Ok(response(current));
                        return Some((item, (statuses, ended, service, Some(current), false)));
                    }
                    tokio::select! {
                        changed = statuses.changed() => if changed.is_err() { return None },
                        changed = ended.changed() => if changed.is_err() { return None },
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
