//! Every SQL statement the store runs, written once and compiled for both backends.
//!
//! The SQL is the same on SQLite and PostgreSQL (`$n` placeholders work on both; the schemas
//! match, see `migrations/`), except that rows read to be changed are locked with
//! `FOR UPDATE` on PostgreSQL; SQLite needs no row locks, its write transactions are
//! serialized (`BEGIN IMMEDIATE`). The connection types differ, so [`impl_statements!`]
//! implements [`Statements`] for each from one definition, instead of generic sqlx code whose
//! trait bounds would outweigh the statements.

use std::future::Future;

use super::error::StoreError;
use super::model::{Account, ListPosition, Payment};
use super::records::{DepositRecord, Entry, KeyRecord, RefundRecord, Scope};

/// The statements of the ledger, on one connection (in a transaction or not).
pub(crate) trait Statements: Send {
    /// The idempotency key `key` of `scope` and `caller` (see `key_caller`), if recorded.
    fn find_key(
        &mut self,
        scope: Scope,
        caller: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;
    /// Records a key; false if `(scope, caller, key)` exists already. On PostgreSQL this waits for a
    /// concurrent transaction that inserted the same key to finish, then reports it.
    fn insert_key(
        &mut self,
        record: &KeyRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes keys created before `created_before_us`; returns how many.
    fn purge_keys(
        &mut self,
        created_before_us: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Inserts an account; false if the id is taken.
    fn insert_account(
        &mut self,
        account: &Account,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Reads an account.
    fn account(
        &mut self,
        account_id: &str,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    /// Reads an account to change it, locking it until the transaction ends.
    fn lock_account(
        &mut self,
        account_id: &str,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    /// Sets an account's balance.
    fn set_balance(
        &mut self,
        account_id: &str,
        balance_minor: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Inserts a payment.
    fn insert_payment(
        &mut self,
        payment: &Payment,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads a payment.
    fn payment(
        &mut self,
        payment_id: &str,
    ) -> impl Future<Output = Result<Option<Payment>, StoreError>> + Send;
    /// Reads a payment to change it, locking it until the transaction ends.
    fn lock_payment(
        &mut self,
        payment_id: &str,
    ) -> impl Future<Output = Result<Option<Payment>, StoreError>> + Send;
    /// Sets how much of a payment is refunded.
    fn set_refunded(
        &mut self,
        payment_id: &str,
        refunded_minor: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// At most `limit` payments an account paid or received, by creation time then id, from
    /// the first or from right after `after`.
    fn payments_of(
        &mut self,
        account_id: &str,
        after: Option<&ListPosition>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Payment>, StoreError>> + Send;

    /// Inserts a deposit.
    fn insert_deposit(
        &mut self,
        deposit: &DepositRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads a deposit.
    fn deposit(
        &mut self,
        deposit_id: &str,
    ) -> impl Future<Output = Result<Option<DepositRecord>, StoreError>> + Send;
    /// Inserts a refund.
    fn insert_refund(
        &mut self,
        refund: &RefundRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads a refund.
    fn refund(
        &mut self,
        refund_id: &str,
    ) -> impl Future<Output = Result<Option<RefundRecord>, StoreError>> + Send;

    /// Writes the two ledger entries of one transfer.
    fn insert_entries(
        &mut self,
        transfer_id: &str,
        kind: Scope,
        currency: &str,
        entries: [Entry<'_>; 2],
        created_at_us: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A round trip to the database.
    fn ping(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The columns of `payments` in the order `payment_from_row` reads them.
macro_rules! payment_columns {
    () => {
        "payment_id, idempotency_key, payer_account_id, payee_account_id, amount_minor, \
         currency, description, metadata, refunded_minor, created_at_us"
    };
}
pub(crate) use payment_columns;

/// Implements [`Statements`] for `$connection` of database `$db`; `$lock` is appended to the
/// reads that lock a row.
macro_rules! impl_statements {
    ($module:ident, $connection:ty, $db:ty, lock = $lock:literal) => {
        pub(super) mod $module {
            use sqlx::Row as _;

            use super::super::error::StoreError;
            use super::super::model::{Account, ListPosition, Payment};
            use super::super::records::{
                time_from_us, time_to_us, DepositRecord, Entry, KeyRecord, RefundRecord, Scope,
            };
            use super::Statements;

            type DbRow = <$db as sqlx::Database>::Row;

            /// An account from a row of `accounts`.
            pub(crate) fn account_from_row(row: &DbRow) -> Result<Account, StoreError> {
                Ok(Account {
                    account_id: row.try_get("account_id")?,
                    currency: row.try_get("currency")?,
                    balance_minor: row.try_get("balance_minor")?,
                    created_at: time_from_us(row.try_get("created_at_us")?),
                    owner: row.try_get("owner")?,
                })
            }

            /// A key of `scope` from a row of `idempotency_keys` (every column but `scope`).
            pub(crate) fn key_from_row(scope: Scope, row: &DbRow) -> Result<KeyRecord, StoreError> {
                Ok(KeyRecord {
                    scope,
                    caller: row.try_get("caller")?,
                    key: row.try_get("idempotency_key")?,
                    fingerprint: row.try_get("fingerprint")?,
                    resource_id: row.try_get("resource_id")?,
                    created_at_us: row.try_get("created_at_us")?,
                })
            }

            /// A payment from a row of `payments` read with `payment_columns!()`.
            pub(crate) fn payment_from_row(row: &DbRow) -> Result<Payment, StoreError> {
                let metadata: String = row.try_get("metadata")?;
                Ok(Payment {
                    payment_id: row.try_get("payment_id")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    payer_account_id: row.try_get("payer_account_id")?,
                    payee_account_id: row.try_get("payee_account_id")?,
                    amount_minor: row.try_get("amount_minor")?,
                    currency: row.try_get("currency")?,
                    description: row.try_get("description")?,
                    metadata: serde_json::from_str(&metadata)
                        .map_err(|error| StoreError::Internal(Box::new(error)))?,
                    refunded_minor: row.try_get("refunded_minor")?,
                    created_at: time_from_us(row.try_get("created_at_us")?),
                })
            }

            fn exactly_one(rows: u64, what: &str) -> Result<(), StoreError> {
                if rows == 1 {
                    Ok(())
                } else {
                    Err(StoreError::internal(format!("{what} changed {rows} rows, not 1")))
                }
            }

            impl Statements for $connection {
                async fn find_key(
                    &mut self,
                    scope: Scope,
                    caller: &str,
                    key: &str,
                ) -> Result<Option<KeyRecord>, StoreError> {
                    let row = sqlx::query(
                        "SELECT fingerprint, resource_id, created_at_us FROM idempotency_keys \
                         WHERE scope = $1 AND caller = $2 AND idempotency_key = $3",
                    )
                    .bind(scope.as_str())
                    .bind(caller)
                    .bind(key)
                    .fetch_optional(&mut *self)
                    .await?;
                    row.map(|row| {
                        Ok(KeyRecord {
                            scope,
                            caller: caller.to_owned(),
                            key: key.to_owned(),
                            fingerprint: row.try_get("fingerprint")?,
                            resource_id: row.try_get("resource_id")?,
                            created_at_us: row.try_get("created_at_us")?,
                        })
                    })
                    .transpose()
                }

                async fn insert_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError> {
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys \
                         (scope, caller, idempotency_key, fingerprint, resource_id, created_at_us) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    )
                    .bind(record.scope.as_str())
                    .bind(&record.caller)
                    .bind(&record.key)
                    .bind(&record.fingerprint)
                    .bind(&record.resource_id)
                    .bind(record.created_at_us)
                    .execute(&mut *self)
                    .await?;
                    Ok(inserted.rows_affected() == 1)
                }

                async fn purge_keys(&mut self, created_before_us: i64) -> Result<u64, StoreError> {
                    let deleted =
                        sqlx::query("DELETE FROM idempotency_keys WHERE created_at_us < $1")
                            .bind(created_before_us)
                            .execute(&mut *self)
                            .await?;
                    Ok(deleted.rows_affected())
                }

                async fn insert_account(&mut self, account: &Account) -> Result<bool, StoreError> {
                    let inserted = sqlx::query(
                        "INSERT INTO accounts \
                         (account_id, currency, balance_minor, created_at_us, owner) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    )
                    .bind(&account.account_id)
                    .bind(&account.currency)
                    .bind(account.balance_minor)
                    .bind(time_to_us(account.created_at))
                    .bind(&account.owner)
                    .execute(&mut *self)
                    .await?;
                    Ok(inserted.rows_affected() == 1)
                }

                async fn account(&mut self, account_id: &str) -> Result<Option<Account>, StoreError> {
                    sqlx::query(
                        "SELECT account_id, currency, balance_minor, created_at_us, owner FROM accounts \
                         WHERE account_id = $1",
                    )
                    .bind(account_id)
                    .fetch_optional(&mut *self)
                    .await?
                    .as_ref()
                    .map(account_from_row)
                    .transpose()
                }

                async fn lock_account(
                    &mut self,
                    account_id: &str,
                ) -> Result<Option<Account>, StoreError> {
                    sqlx::query(concat!(
                        "SELECT account_id, currency, balance_minor, created_at_us, owner FROM accounts \
                         WHERE account_id = $1",
                        $lock
                    ))
                    .bind(account_id)
                    .fetch_optional(&mut *self)
                    .await?
                    .as_ref()
                    .map(account_from_row)
                    .transpose()
                }

                async fn set_balance(
                    &mut self,
                    account_id: &str,
                    balance_minor: i64,
                ) -> Result<(), StoreError> {
                    let updated =
                        sqlx::query("UPDATE accounts SET balance_minor = $2 WHERE account_id = $1")
                            .bind(account_id)
                            .bind(balance_minor)
                            .execute(&mut *self)
                            .await?;
                    exactly_one(updated.rows_affected(), "balance update")
                }

                async fn insert_payment(&mut self, payment: &Payment) -> Result<(), StoreError> {
                    let metadata = serde_json::to_string(&payment.metadata)
                        .map_err(|error| StoreError::Internal(Box::new(error)))?;
                    sqlx::query(concat!(
                        "INSERT INTO payments (",
                        payment_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    ))
                    .bind(&payment.payment_id)
                    .bind(&payment.idempotency_key)
                    .bind(&payment.payer_account_id)
                    .bind(&payment.payee_account_id)
                    .bind(payment.amount_minor)
                    .bind(&payment.currency)
                    .bind(&payment.description)
                    .bind(metadata)
                    .bind(payment.refunded_minor)
                    .bind(time_to_us(payment.created_at))
                    .execute(&mut *self)
                    .await?;
                    Ok(())
                }

                async fn payment(&mut self, payment_id: &str) -> Result<Option<Payment>, StoreError> {
                    sqlx::query(concat!(
                        "SELECT ",
                        payment_columns!(),
                        " FROM payments WHERE payment_id = $1"
                    ))
                    .bind(payment_id)
                    .fetch_optional(&mut *self)
                    .await?
                    .as_ref()
                    .map(payment_from_row)
                    .transpose()
                }

                async fn lock_payment(
                    &mut self,
                    payment_id: &str,
                ) -> Result<Option<Payment>, StoreError> {
                    sqlx::query(concat!(
                        "SELECT ",
                        payment_columns!(),
                        " FROM payments WHERE payment_id = $1",
                        $lock
                    ))
                    .bind(payment_id)
                    .fetch_optional(&mut *self)
                    .await?
                    .as_ref()
                    .map(payment_from_row)
                    .transpose()
                }

                async fn set_refunded(
                    &mut self,
                    payment_id: &str,
                    refunded_minor: i64,
                ) -> Result<(), StoreError> {
                    let updated =
                        sqlx::query("UPDATE payments SET refunded_minor = $2 WHERE payment_id = $1")
                            .bind(payment_id)
                            .bind(refunded_minor)
                            .execute(&mut *self)
                            .await?;
                    exactly_one(updated.rows_affected(), "refund update")
                }

                async fn payments_of(
                    &mut self,
                    account_id: &str,
                    after: Option<&ListPosition>,
                    limit: u32,
                ) -> Result<Vec<Payment>, StoreError> {
                    // No position is one before every payment: times are never negative.
                    let (after_us, after_id) = after
                        .map_or((-1, ""), |after| (after.created_at_us, after.payment_id.as_str()));
                    // One range scan of ledger_entries_by_account (account, kind, time,
                    // transfer id), stopping after `limit` payments: every payment has an
                    // entry for its payer and one for its payee, with its id and creation
                    // time. A payment to oneself has both on the account and is listed once.
                    sqlx::query(concat!(
                        "SELECT ", payment_columns!(), " FROM payments WHERE payment_id IN \
                         (SELECT transfer_id FROM (SELECT DISTINCT created_at_us, transfer_id \
                         FROM ledger_entries WHERE account_id = $1 AND kind = 'payment' \
                         AND (created_at_us, transfer_id) > ($2, $3) \
                         ORDER BY created_at_us, transfer_id LIMIT $4) AS page) \
                         ORDER BY created_at_us, payment_id"
                    ))
                    .bind(account_id)
                    .bind(after_us)
                    .bind(after_id)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self)
                    .await?
                    .iter()
                    .map(payment_from_row)
                    .collect()
                }

                async fn insert_deposit(&mut self, deposit: &DepositRecord) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO deposits \
                         (deposit_id, account_id, amount_minor, balance_after_minor, created_at_us) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&deposit.deposit_id)
                    .bind(&deposit.account_id)
                    .bind(deposit.amount_minor)
                    .bind(deposit.balance_after_minor)
                    .bind(deposit.created_at_us)
                    .execute(&mut *self)
                    .await?;
                    Ok(())
                }

                async fn deposit(
                    &mut self,
                    deposit_id: &str,
                ) -> Result<Option<DepositRecord>, StoreError> {
                    let row = sqlx::query(
                        "SELECT deposit_id, account_id, amount_minor, balance_after_minor, \
                         created_at_us FROM deposits WHERE deposit_id = $1",
                    )
                    .bind(deposit_id)
                    .fetch_optional(&mut *self)
                    .await?;
                    row.map(|row| {
                        Ok(DepositRecord {
                            deposit_id: row.try_get("deposit_id")?,
                            account_id: row.try_get("account_id")?,
                            amount_minor: row.try_get("amount_minor")?,
                            balance_after_minor: row.try_get("balance_after_minor")?,
                            created_at_us: row.try_get("created_at_us")?,
                        })
                    })
                    .transpose()
                }

                async fn insert_refund(&mut self, refund: &RefundRecord) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO refunds \
                         (refund_id, payment_id, amount_minor, refunded_after_minor, created_at_us) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&refund.refund_id)
                    .bind(&refund.payment_id)
                    .bind(refund.amount_minor)
                    .bind(refund.refunded_after_minor)
                    .bind(refund.created_at_us)
                    .execute(&mut *self)
                    .await?;
                    Ok(())
                }

                async fn refund(&mut self, refund_id: &str) -> Result<Option<RefundRecord>, StoreError> {
                    let row = sqlx::query(
                        "SELECT refund_id, payment_id, amount_minor, refunded_after_minor, \
                         created_at_us FROM refunds WHERE refund_id = $1",
                    )
                    .bind(refund_id)
                    .fetch_optional(&mut *self)
                    .await?;
                    row.map(|row| {
                        Ok(RefundRecord {
                            refund_id: row.try_get("refund_id")?,
                            payment_id: row.try_get("payment_id")?,
                            amount_minor: row.try_get("amount_minor")?,
                            refunded_after_minor: row.try_get("refunded_after_minor")?,
                            created_at_us: row.try_get("created_at_us")?,
                        })
                    })
                    .transpose()
                }

                async fn insert_entries(
                    &mut self,
                    transfer_id: &str,
                    kind: Scope,
                    currency: &str,
                    entries: [Entry<'_>; 2],
                    created_at_us: i64,
                ) -> Result<(), StoreError> {
                    let [first, second] = entries;
                    sqlx::query(
                        "INSERT INTO ledger_entries \
                         (transfer_id, kind, account_id, currency, amount_minor, created_at_us) \
                         VALUES ($1, $2, $3, $4, $5, $6), ($1, $2, $7, $4, $8, $6)",
                    )
                    .bind(transfer_id)
                    .bind(kind.as_str())
                    .bind(first.account_id)
                    .bind(currency)
                    .bind(first.amount_minor)
                    .bind(created_at_us)
                    .bind(second.account_id)
                    .bind(second.amount_minor)
                    .execute(&mut *self)
                    .await?;
                    Ok(())
                }

                async fn ping(&mut self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(&mut *self).await?;
                    Ok(())
                }
            }
        }
    };
}

impl_statements!(
    postgres,
    sqlx::PgConnection,
    sqlx::Postgres,
    lock = " FOR UPDATE"
);
impl_statements!(sqlite, sqlx::SqliteConnection, sqlx::Sqlite, lock = "");
