//! Client-side health checking: one grpc.health.v1 `Watch` stream per backend, over one of
//! its connections, decides whether the backend takes new calls.
//!
//! A backend counts as still connecting until its first answer, is in rotation while it
//! says SERVING, and out of it while it says NOT_SERVING (a server draining before shutdown
//! does). A server without the health service (UNIMPLEMENTED) is taken as serving, as
//! grpc-go does; a broken stream puts the backend out of rotation until a new stream says
//! otherwise.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use tokio::sync::watch;
use tonic::Code;

use super::subchannel::{Backend, Health};
use keel_health::pb::HealthCheckRequest;
use keel_health::pb::health_check_response::ServingStatus;
use keel_health::pb::health_client::HealthClient;

/// Wait before opening a new stream after one failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often to look for a connection while the backend has none.
const CONNECTION_POLL: Duration = Duration::from_millis(50);

/// Watches `service` on `backend` until `stop` is raised.
pub(crate) async fn run(backend: Arc<Backend>, service: String, mut stop: watch::Receiver<bool>) {
    let mut was_connected = false;
    loop {
        let Some(connection) = backend.connection() else {
            was_connected = false;
            tokio::select! {
                () = tokio::time::sleep(CONNECTION_POLL) => continue,
                _ = stop.wait_for(|stop| *stop) => return,
            }
        };
        if backend.health() == Health::NotServing && !was_connected {
            // A new connection: not known until its first answer.
            backend.set_health(Health::Unknown);
        }
        was_connected = true;
        let watched = watch_once(&backend, connection, &service);
        let ended = tokio::select! {
            ended = watched => ended,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match ended {
            Watched::Unimplemented => {
                tracing::debug!(address = %backend.address, "no health service: taken as serving");
                backend.set_health(Health::Serving);
                // Nothing to watch on this connection; look again when it is replaced.
                while backend.connection().is_some() {
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                }
            }
            Watched::Failed(error) => {
                tracing::debug!(address = %backend.address, %error, "health watch ended");
                backend.set_health(Health::NotServing);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

enum Watched {
    Unimplemented,
    Failed(String),
}

/// One `Watch` stream, applying each answer, until it ends.
async fn watch_once(
    backend: &Backend,
    connection: SendRequest<tonic::body::Body>,
    service: &str,
) -> Watched {
    let mut client = HealthClient::new(Connection(connection));
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = match client.watch(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Watched::Unimplemented,
        Err(status) => return Watched::Failed(status.to_string()),
    };
    loop {
        match stream.message().await {
            Ok(Some(answer)) => {
                backend.set_health(if answer.status == ServingStatus::Serving as i32 {
                    Health::Serving
                } else {
                    Health::NotServing
                });
            }
            Ok(None) => return Watched::Failed("the server ended the stream".into()),
            Err(status) if status.code() == Code::Unimplemented => {
                return Watched::Unimplemented;
            }
            Err(status) => return Watched::Failed(status.to_string()),
        }
    }
}

/// One HTTP/2 connection as a tonic transport, with an absolute URI for hyper.
#[derive(Clone)]
struct Connection(SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        if let Ok(uri) = format!("http://localhost{path}").parse() {
            *request.uri_mut() = uri;
        }
        Box::pin(self.0.send_request(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;
    use crate::error::ConnectError;
    use crate::subchannel::ConnectivityState;
    use crate::testing::{HealthAnswer, Net, drive, pickable, say_hello, until_pickable};

    fn watching(builder: crate::ChannelBuilder) -> crate::ChannelBuilder {
        builder.config(ChannelConfig {
            health_check: Some(String::new()),
            ..ChannelConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_leaves_the_pick_set_while_not_serving_and_rejoins_when_serving() {
        let net = Net::default();
        let (a, b) = (net.host(1, Duration::ZERO), net.host(2, Duration::ZERO));
        a.set_health(HealthAnswer::Silent);
        let channel = net.channel(&[&a, &b], watching);

        // Connected but not yet answered: not pickable, the channel still connecting.
        until_pickable(&channel, &[&b]).await;
        assert_eq!(channel.backends()[0].1, ConnectivityState::Ready);
        a.set_health(HealthAnswer::Status(ServingStatus::Serving));
        until_pickable(&channel, &[&a, &b]).await;

        a.set_health(HealthAnswer::Status(ServingStatus::NotServing));
        until_pickable(&channel, &[&b]).await;
        let before = a.calls();
        assert!(drive(&channel, 20, 2).await.is_empty());
        assert_eq!(a.calls(), before, "no call while NOT_SERVING");

        a.set_health(HealthAnswer::Status(ServingStatus::Serving));
        until_pickable(&channel, &[&a, &b]).await;
        assert!(drive(&channel, 20, 2).await.is_empty());
        assert!(a.calls() > before, "back in rotation");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_backend_not_serving_calls_fail_fast_and_say_why() {
        let net = Net::default();
        let (a, b) = (net.host(1, Duration::ZERO), net.host(2, Duration::ZERO));
        let channel = net.channel(&[&a, &b], watching);
        assert_eq!(channel.connect(Duration::from_secs(1)).await, Ok(()));
        for host in [&a, &b] {
            host.set_health(HealthAnswer::Status(ServingStatus::NotServing));
        }
        until_pickable(&channel, &[]).await;
        assert_eq!(channel.state(), ConnectivityState::TransientFailure);
        assert_eq!(
            channel.connect(Duration::from_secs(1)).await,
            Err(ConnectError::OutOfRotation)
        );
        let status = say_hello(&channel).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("out of rotation"), "{status:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_watch_takes_the_backend_out_until_a_new_one_says_serving() {
        let net = Net::default();
        let (a, b) = (net.host(1, Duration::ZERO), net.host(2, Duration::ZERO));
        let channel = net.channel(&[&a, &b], watching);
        until_pickable(&channel, &[&a, &b]).await;

        a.set_health(HealthAnswer::Fails(Code::Internal));
        until_pickable(&channel, &[&b]).await;
        let broken = tokio::time::Instant::now();
        a.set_health(HealthAnswer::Status(ServingStatus::Serving));
        until_pickable(&channel, &[&a, &b]).await;
        assert_eq!(
            broken.elapsed(),
            RETRY_AFTER,
            "a new Watch after the retry delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_the_health_service_is_taken_as_serving() {
        let net = Net::default();
        let a = net.host(1, Duration::ZERO);
        a.set_health(HealthAnswer::Fails(Code::Unimplemented));
        let channel = net.channel(&[&a], watching);
        until_pickable(&channel, &[&a]).await;
        // sleep: virtual time: it stays in rotation, with no new Watch to ask
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pickable(&channel), [a.address()]);
        assert!(say_hello(&channel).await.is_ok());
    }
}
