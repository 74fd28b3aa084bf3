//! Shared fixtures: a fresh database per test on each backend, the macro that runs one test
//! body on both, and the ledger invariants every test can check.
#![allow(
    dead_code,
    unused_imports,
    unused_macros,
    reason = "each test binary uses a different part of the fixture"
)]

pub mod api;
pub mod app;
pub mod proxy;
pub mod redis;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use payments::store::{self, PaymentRequest, Store, StoreConfig, StoreError};
use sqlx::{Connection, Row};

/// Where the test PostgreSQL lives: an administrative database to create test databases from.
/// `PAYMENTS_TEST_POSTGRES_URL` overrides it.
pub fn postgres_admin_url() -> String {
    std::env::var("PAYMENTS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the test server.
pub fn postgres_url(name: &str) -> String {
    let admin = postgres_admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// The two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A store on a database of its own: a fresh PostgreSQL database `payments_test_<random>` or a
/// SQLite file in a fresh temporary directory, removed when dropped (even after a panic).
pub struct TestDb {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
    /// The URL the store was opened with.
    pub url: String,
    inspector: Inspector,
    cleanup: Cleanup,
}

enum Inspector {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

enum Cleanup {
    Postgres { database: String },
    Sqlite { dir: PathBuf },
}

impl TestDb {
    /// A fresh database with the default configuration.
    pub async fn new(backend: Backend) -> Self {
        Self::with_config(backend, StoreConfig::default()).await
    }

    /// A fresh database with `config`.
    pub async fn with_config(backend: Backend, config: StoreConfig) -> Self {
        Self::reached_by(backend, str::to_owned, config).await
    }

    /// A fresh database, the store reaching it by the URL `store_url` makes of the database's
    /// own (through a proxy, say); the fixture's own checks still connect directly.
    pub async fn reached_by(
        backend: Backend,
        store_url: impl Fn(&str) -> String,
        config: StoreConfig,
    ) -> Self {
        let (url, cleanup) = fresh_database(backend).await;
        Self::open(backend, url, cleanup, store_url, config).await
    }

    /// A fresh database on the schema of the first `migrations` migrations only, holding
    /// what the `legacy` statements write there, then opened by the store, which applies
    /// the others: for tests of a migration over existing rows.
    pub async fn upgraded(backend: Backend, migrations: usize, legacy: &[&str]) -> Self {
        let (url, cleanup) = fresh_database(backend).await;
        let (kind, scratch) = match &cleanup {
            Cleanup::Sqlite { dir } => ("sqlite", dir.join("migrations")),
            Cleanup::Postgres { database } => (
                "postgres",
                std::env::temp_dir().join(format!("{database}_migrations")),
            ),
        };
        let all = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(kind);
        let mut files: Vec<_> = std::fs::read_dir(&all)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        std::fs::create_dir_all(&scratch).unwrap();
        for file in &files[..migrations] {
            std::fs::copy(file, scratch.join(file.file_name().unwrap())).unwrap();
        }
        let migrator = sqlx::migrate::Migrator::new(scratch.as_path())
            .await
            .unwrap();
        match backend {
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                migrator.run(&pool).await.unwrap();
                for statement in legacy {
                    sqlx::query(statement).execute(&pool).await.unwrap();
                }
                pool.close().await;
            }
            Backend::Sqlite => {
                let path = url.strip_prefix("sqlite://").unwrap();
                std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
                let options =
                    <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
                        .unwrap()
                        .create_if_missing(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                migrator.run(&pool).await.unwrap();
                for statement in legacy {
                    sqlx::query(statement).execute(&pool).await.unwrap();
                }
                pool.close().await;
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Self::open(backend, url, cleanup, str::to_owned, StoreConfig::default()).await
    }

    /// Opens the store on `url` (reached by `store_url`'s URL) and the fixture's own pool.
    async fn open(
        backend: Backend,
        url: String,
        cleanup: Cleanup,
        store_url: impl Fn(&str) -> String,
        config: StoreConfig,
    ) -> Self {
        let store_url = store_url(&url);
        let store = store::open_with(&store_url, config)
            .await
            .unwrap_or_else(|error| panic!("open {store_url}: {error:?}"));
        let inspector = match backend {
            Backend::Postgres => Inspector::Postgres(sqlx::PgPool::connect(&url).await.unwrap()),
            Backend::Sqlite => Inspector::Sqlite(sqlx::SqlitePool::connect(&url).await.unwrap()),
        };
        Self {
            store,
            backend,
            url: store_url,
            inspector,
            cleanup,
        }
    }

    /// Opens an account in `currency`.
    pub async fn account(&self, currency: &str) -> String {
        self.store
            .create_account(None, currency, None)
            .await
            .unwrap()
            .account_id
    }

    /// Opens an account in `currency` and deposits `amount_minor` into it.
    pub async fn funded(&self, currency: &str, amount_minor: i64) -> String {
        let account_id = self.account(currency).await;
        self.store
            .deposit(
                &account_id,
                amount_minor,
                &format!("fund-{account_id}"),
                None,
            )
            .await
            .unwrap();
        account_id
    }

    /// The balance of an account.
    pub async fn balance(&self, account_id: &str) -> i64 {
        self.store
            .get_account(account_id)
            .await
            .unwrap()
            .balance_minor
    }

    /// One integer from a query.
    pub async fn i64(&self, sql: &str) -> i64 {
        match &self.inspector {
            Inspector::Postgres(pool) => sqlx::query(sql).fetch_one(pool).await.unwrap().get(0),
            Inspector::Sqlite(pool) => sqlx::query(sql).fetch_one(pool).await.unwrap().get(0),
        }
    }

    /// (text, integer) rows from a query.
    pub async fn pairs(&self, sql: &str) -> Vec<(String, i64)> {
        match &self.inspector {
            Inspector::Postgres(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect(),
            Inspector::Sqlite(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect(),
        }
    }

    /// Runs a statement directly on the database, bypassing the store.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.inspector {
            Inspector::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Inspector::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    /// Checks the ledger's invariants and returns the total balance:
    /// - every account's balance is the sum of its ledger entries, and none is negative;
    /// - every deposit, payment and refund wrote exactly two entries that sum to zero;
    /// - money only came from deposits: total balance = total deposited = what the world gave;
    /// - every payment's refunded amount is the sum of its refunds, within its amount.
    pub async fn assert_ledger_consistent(&self) -> i64 {
        let drift = self
            .pairs(
                "SELECT a.account_id, \
                        a.balance_minor - CAST(COALESCE(SUM(e.amount_minor), 0) AS BIGINT) \
                 FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.account_id \
                 GROUP BY a.account_id, a.balance_minor \
                 HAVING a.balance_minor <> COALESCE(SUM(e.amount_minor), 0)",
            )
            .await;
        assert!(
            drift.is_empty(),
            "balances differ from their ledger entries: {drift:?}"
        );
        let negative = self
            .i64("SELECT COUNT(*) FROM accounts WHERE balance_minor < 0")
            .await;
        assert_eq!(negative, 0, "negative balances");

        let unbalanced = self
            .pairs(
                "SELECT transfer_id, COUNT(*) FROM ledger_entries GROUP BY transfer_id \
                 HAVING SUM(amount_minor) <> 0 OR COUNT(*) <> 2",
            )
            .await;
        assert!(
            unbalanced.is_empty(),
            "transfers not in two balanced entries: {unbalanced:?}"
        );
        for (table, id) in [
            ("deposits", "deposit_id"),
            ("payments", "payment_id"),
            ("refunds", "refund_id"),
        ] {
            let without_entries = self
                .i64(&format!(
                    "SELECT COUNT(*) FROM {table} t WHERE NOT EXISTS \
                     (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.{id})"
                ))
                .await;
            assert_eq!(without_entries, 0, "{table} without ledger entries");
        }
        let orphans = self
            .i64(
                "SELECT COUNT(*) FROM ledger_entries e WHERE \
                 NOT EXISTS (SELECT 1 FROM deposits d WHERE d.deposit_id = e.transfer_id) AND \
                 NOT EXISTS (SELECT 1 FROM payments p WHERE p.payment_id = e.transfer_id) AND \
                 NOT EXISTS (SELECT 1 FROM refunds r WHERE r.refund_id = e.transfer_id)",
            )
            .await;
        assert_eq!(
            orphans, 0,
            "ledger entries of no deposit, payment or refund"
        );

        let total_balance = self
            .i64("SELECT CAST(COALESCE(SUM(balance_minor), 0) AS BIGINT) FROM accounts")
            .await;
        let deposited = self
            .i64("SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM deposits")
            .await;
        let from_world = self
            .i64(
                "SELECT CAST(COALESCE(-SUM(amount_minor), 0) AS BIGINT) FROM ledger_entries \
                 WHERE account_id IS NULL",
            )
            .await;
        assert_eq!(total_balance, deposited, "total balance vs total deposits");
        assert_eq!(from_world, deposited, "world entries vs deposits");

        let refund_drift = self
            .pairs(
                "SELECT p.payment_id, p.refunded_minor FROM payments p \
                 WHERE p.refunded_minor <> (SELECT CAST(COALESCE(SUM(r.amount_minor), 0) AS BIGINT) \
                                            FROM refunds r WHERE r.payment_id = p.payment_id) \
                    OR p.refunded_minor > p.amount_minor",
            )
            .await;
        assert!(
            refund_drift.is_empty(),
            "refunded amounts differ from refunds: {refund_drift:?}"
        );
        total_balance
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { database } => {
                // Drop runs inside the test's runtime, which cannot block on itself: use a
                // thread with a runtime of its own.
                let name = database.clone();
                let dropped = std::thread::spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(drop_database(&name))
                })
                .join();
                match dropped {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => eprintln!("could not drop test database {database}: {error}"),
                    Err(_) => eprintln!("dropping test database {database} panicked"),
                }
            }
        }
    }
}

async fn fresh_database(backend: Backend) -> (String, Cleanup) {
    let suffix = format!("{:016x}", rand::random::<u64>());
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("payments_test_{suffix}"));
            let url = format!("sqlite://{}", dir.join("data").join("ledger.db").display());
            (url, Cleanup::Sqlite { dir })
        }
        Backend::Postgres => {
            let database = format!("payments_test_{suffix}");
            let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
                .await
                .expect("PostgreSQL for tests (see scripts/test.sh)");
            sqlx::query(&format!("CREATE DATABASE {database}"))
                .execute(&mut admin)
                .await
                .unwrap();
            (postgres_url(&database), Cleanup::Postgres { database })
        }
    }
}

async fn drop_database(database: &str) -> Result<(), String> {
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A payment request in USD with a description and metadata.
pub fn payment(key: &str, payer: &str, payee: &str, amount_minor: i64) -> PaymentRequest {
    PaymentRequest {
        idempotency_key: key.to_owned(),
        payer_account_id: payer.to_owned(),
        payee_account_id: payee.to_owned(),
        amount_minor,
        currency: "USD".to_owned(),
        description: format!("test payment {key}"),
        metadata: BTreeMap::from([("order".to_owned(), key.to_owned())]),
        caller: None,
    }
}

/// Unwraps the error of a result that must have failed.
#[track_caller]
pub fn error_of<T: std::fmt::Debug>(result: Result<T, StoreError>) -> StoreError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error,
    }
}

/// Defines, for each `async fn case(db: &TestDb)` named, a test on SQLite
/// (`sqlite::case`) and one on PostgreSQL (`postgres::case`), each on a fresh database.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = crate::common::TestDb::new(crate::common::Backend::Sqlite).await;
                    super::$case(&db).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = crate::common::TestDb::new(crate::common::Backend::Postgres).await;
                    super::$case(&db).await;
                }
            )+
        }
    };
}
pub(crate) use on_both_backends;
