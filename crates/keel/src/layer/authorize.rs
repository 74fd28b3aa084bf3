//! Authentication and authorization of every call, from `auth.*` (keel-authz): the bearer
//! token verified into `Arc<Claims>` in the request's extensions (a bad one is
//! UNAUTHENTICATED), then the policy's decision over the path, headers, the peer's
//! `Arc<PeerIdentity>` (put there by TLS) and the claims (a refusal is PERMISSION_DENIED,
//! naming the policy and the deciding rule).
//!
//! Every gRPC method passes it, health and reflection included, as grpc-go's authz
//! interceptors do: a policy that should let gRPC health checks through says so
//! (`"paths": ["/grpc.health.v1.Health/*"]`, with `auth.require_token = false` when tokens
//! are on). Kubelet and load-balancer probes normally use the admin port's `/healthz` and
//! `/readyz`, which this layer does not see. REST and gRPC-Web calls pass it too: the
//! gateway calls the same stack in-process, passing `authorization` and the peer's identity.

use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use keel_authz::Auth;
use keel_authz::token::TokenError;
use keel_authz::watch::{FileKind, ReloadObserver, ReloadOutcome};
use keel_core::error::BusinessError;
use keel_core::identity::{Claims, PeerIdentity};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Code;
use tower::{Layer, Service};

/// The `google.rpc.ErrorInfo` domain of Keel's authentication and authorization errors.
pub const AUTH_DOMAIN: &str = "auth.keel.dev";

/// A decision's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A reload's file and outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    outcome: &'static str,
}

/// `keel_auth_decisions_total{outcome}` and `keel_auth_reloads_total{file,outcome}`
/// (`Default`: counters nobody scrapes).
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    allowed: Counter,
    denied: Counter,
    unauthenticated: Counter,
    reloads: Family<ReloadLabels, Counter>,
}

impl AuthMetrics {
    /// Registers both families in `keel` (the `keel_` sub-registry).
    pub fn register(keel: &mut Registry) -> Self {
        let decisions = Family::<OutcomeLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        keel.register(
            "auth_decisions",
            "Calls decided by authentication and the authorization policy, by outcome \
             (allowed, denied: PERMISSION_DENIED, unauthenticated: UNAUTHENTICATED)",
            decisions.clone(),
        );
        keel.register(
            "auth_reloads",
            "Reloads of the auth.policy and auth.jwks files that changed them (reloaded) or \
             were refused, keeping the last good version (failed)",
            reloads.clone(),
        );
        let outcome = |outcome| decisions.get_or_create(&OutcomeLabels { outcome }).clone();
        Self {
            allowed: outcome("allowed"),
            denied: outcome("denied"),
            unauthenticated: outcome("unauthenticated"),
            reloads,
        }
    }

    /// Counts each reload in `keel_auth_reloads_total`.
    pub fn reload_observer(&self) -> ReloadObserver {
        let reloads = self.reloads.clone();
        Arc::new(move |file: FileKind, outcome: ReloadOutcome| {
            reloads
                .get_or_create(&ReloadLabels {
                    file: file.as_str(),
                    outcome: outcome.as_str(),
                })
                .inc();
        })
    }
}

/// Layer producing [`Authorize`]; without an [`Auth`] it passes every call through.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    auth: Option<Arc<Auth>>,
    metrics: AuthMetrics,
}

impl AuthorizeLayer {
    /// Authenticates and authorizes calls with `auth` (`None`: nothing configured),
    /// counting decisions in `metrics`.
    pub fn new(auth: Option<Arc<Auth>>, metrics: AuthMetrics) -> Self {
        Self { auth, metrics }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

/// Calls the inner service only for calls the token check and the policy admit.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for Authorize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<B>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(auth) = &self.layer.auth else {
            return Either::Right(self.inner.call(request));
        };
        // Only this layer puts claims in a request: nothing from further out is trusted.
        request.extensions_mut().remove::<Arc<Claims>>();
        let claims = match auth.authenticate(request.headers()) {
            Ok(claims) => claims.map(Arc::new),
            Err(error) => {
                self.layer.metrics.unauthenticated.inc();
                return refuse(unauthenticated(&error));
            }
        };
        let peer = request.extensions().get::<Arc<PeerIdentity>>();
        if let Some(decision) = auth.authorize(
            request.uri().path(),
            request.headers(),
            peer.map(|peer| &**peer),
            claims.as_deref(),
        ) && !decision.is_allowed()
        {
            self.layer.metrics.denied.inc();
            tracing::debug!(path = request.uri().path(), %decision, "call refused");
            let mut error = BusinessError::new(
                Code::PermissionDenied,
                "POLICY_DENIED",
                decision.to_string(),
            )
            .domain(AUTH_DOMAIN)
            .metadata("policy", decision.policy());
            if let Some(rule) = decision.rule() {
                error = error.metadata("rule", rule);
            }
            return refuse(error);
        }
        self.layer.metrics.allowed.inc();
        if let Some(claims) = claims {
            request.extensions_mut().insert(claims);
        }
        Either::Right(self.inner.call(request))
    }
}

/// UNAUTHENTICATED for a refused token, with RFC 6750's challenge in the message and in
/// the ErrorInfo's `www_authenticate`.
fn unauthenticated(error: &TokenError) -> BusinessError {
    let challenge = error.challenge();
    BusinessError::new(
        Code::Unauthenticated,
        error.reason(),
        format!("{error} (WWW-Authenticate: {challenge})"),
    )
    .domain(AUTH_DOMAIN)
    .metadata("www_authenticate", challenge)
}

/// A ready refusal, in place of the inner call.
fn refuse<B: Default, E, F>(
    error: BusinessError,
) -> Either<Ready<Result<http::Response<B>, E>>, F> {
    Either::Left(std::future::ready(Ok(error.into_status().into_http())))
}
