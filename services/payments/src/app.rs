//! The payments service assembled from its configuration: storage, Redis, the two services,
//! the readiness checks and Keel's server. The `payments` binary is this plus flags and
//! signals; tests run the very same assembly in-process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel::health::{HealthRegistry, ReadinessCheck};
use tokio::task::JoinHandle;

use crate::config::PaymentsConfig;
use crate::limit::Limiter;
use crate::redis_conn::Redis;
use crate::service::{Paging, Payments};
use crate::store::{self, CachedStore, Store, StoreConfig};

/// How often expired idempotency keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// A bound payments server and what it runs on; serving it closes them at the end.
#[derive(Debug)]
pub struct App {
    server: keel::BoundServer,
    store: Arc<dyn Store>,
    purger: JoinHandle<()>,
}

impl App {
    /// Opens storage (applying migrations), prepares Redis when configured (it connects
    /// lazily), registers the readiness checks — the database critical, Redis degraded only —
    /// and binds the listeners. Call it inside a Tokio runtime.
    ///
    /// Errors: storage cannot be opened, the Redis URL or the REST rules are invalid, or a
    /// listener cannot bind.
    pub async fn bind(config: PaymentsConfig) -> anyhow::Result<Self> {
        let store = store::open_with(&config.database_url, store_config(&config))
            .await
            .context("cannot open storage (check --database-url)")?;
        tracing::info!(backend = store.backend(), "storage open");
        let purger = tokio::spawn(purge_keys(store.clone(), config.idempotency_retention));

        let redis = if config.redis_url.is_empty() {
            None
        } else {
            let redis = Redis::open_with_timeout(
                &config.redis_url,
                config.redis_key_prefix.clone(),
                config.redis_command_timeout,
            )
            .context("invalid --redis-url")?;
            tracing::info!(
                prefix = redis.prefix(),
                "redis configured (connects lazily)"
            );
            Some(redis)
        };
        // With Redis, replays are answered from it when they can be and the limiter's budget
        // is shared by every instance; the store stays the source of truth either way.
        let service_store: Arc<dyn Store> = match &redis {
            Some(redis) => Arc::new(CachedStore::new(
                store.clone(),
                redis.clone(),
                config.idempotency_retention,
            )),
            None => store.clone(),
        };
        let paging = Paging {
            default_page_size: config.list_default_page_size,
            max_page_size: config.list_max_page_size,
            max_page_bytes: config.server.limits.max_send_message_size,
        };
        let mut payments =
            Payments::new(service_store, config.rate_limit_per_account).paging(paging);
        if let Some(redis) = &redis
            && config.rate_limit_per_account > 0
        {
            payments =
                payments.limiter(Limiter::redis(redis.clone(), config.rate_limit_per_account));
        }

        let mut builder = keel::Server::builder(config.server.clone())
            .add_service(payments.account_service())
            .add_service(payments.payment_service())
            .file_descriptor_set(crate::FILE_DESCRIPTOR_SET);
        if config.rest_gateway {
            builder = builder.http_fallback(crate::rest::fallback(Default::default())?);
        }
        add_readiness_checks(&builder.health(), &store, redis, &config).await;
        let server = builder.bind().await?;
        Ok(Self {
            server,
            store,
            purger,
        })
    }

    /// The bound server: its addresses, health registry and metrics.
    pub fn server(&self) -> &keel::BoundServer {
        &self.server
    }

    /// Serves until SIGTERM or SIGINT, shuts down gracefully, then closes storage.
    ///
    /// Errors: the signal handlers cannot be installed.
    pub async fn serve_until_signal(self) -> anyhow::Result<()> {
        let Self {
            server,
            store,
            purger,
        } = self;
        let served = server.serve_until_signal().await;
        close(store, purger).await;
        served?;
        Ok(())
    }

    /// Serves until `shutdown` completes, shuts down gracefully, then closes storage.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let Self {
            server,
            store,
            purger,
        } = self;
        server.serve(shutdown).await;
        close(store, purger).await;
    }
}

/// The store's settings from the service's.
fn store_config(config: &PaymentsConfig) -> StoreConfig {
    StoreConfig::default()
        .idempotency_retention(config.idempotency_retention)
        .max_connections(config.database_max_connections)
        .statement_timeout(config.database_statement_timeout)
        .transaction_timeout(config.database_transaction_timeout)
        .commit_timeout(config.database_commit_timeout)
        .batch_size(config.payment_batch_size)
        .committers(config.payment_committers)
}

/// The database as a critical check: without it no request can be served. Redis, when
/// configured, as a degraded one: payments go on without it, only slower to replay.
async fn add_readiness_checks(
    health: &HealthRegistry,
    store: &Arc<dyn Store>,
    redis: Option<Redis>,
    config: &PaymentsConfig,
) {
    let timing = |check: ReadinessCheck| {
        check
            .timeout(config.readiness_check_timeout)
            .interval(config.readiness_check_interval)
    };
    let store = store.clone();
    let database = ReadinessCheck::new("database", move || {
        let store = store.clone();
        async move { store.ping().await }
    });
    health.add_check(timing(database)).await;
    if let Some(redis) = redis {
        let redis = ReadinessCheck::new("redis", move || {
            let redis = redis.clone();
            async move { redis.ping().await }
        });
        health.add_check(timing(redis).degraded()).await;
    }
}

/// Purges expired idempotency keys every [`PURGE_EVERY`], for ever.
async fn purge_keys(store: Arc<dyn Store>, retention: Duration) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        every.tick().await;
        match store.purge_idempotency_keys(retention).await {
            Ok(purged) => tracing::debug!(purged, "expired idempotency keys purged"),
            Err(error) => tracing::warn!(%error, "purging idempotency keys failed; will retry"),
        }
    }
}

async fn close(store: Arc<dyn Store>, purger: JoinHandle<()>) {
    purger.abort();
    store.close().await;
}
