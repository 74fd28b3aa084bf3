//! The set-based statements of a group commit: each handles every payment of a batch in one
//! statement, on PostgreSQL with arrays bound as parameters and expanded with `unnest`, on
//! SQLite with one JSON array bound as a parameter and expanded with `json_each`.

use std::collections::HashSet;
use std::future::Future;

use serde::Serialize;

use super::error::StoreError;
use super::model::{Account, Payment};
use super::records::{KeyRecord, Scope, time_to_us};
use super::statements::{self, Statements, payment_columns};

/// One transfer's pair of ledger entries: `amount_minor` from `debit` to `credit`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer<'a> {
    pub(crate) transfer_id: &'a str,
    pub(crate) debit: &'a str,
    pub(crate) credit: &'a str,
    pub(crate) currency: &'a str,
    pub(crate) amount_minor: i64,
    pub(crate) created_at_us: i64,
}

/// The statements of the ledger over many rows at once, inside one transaction.
pub(crate) trait BatchStatements: Statements {
    /// Records idempotency keys (of one scope, all distinct) in ascending (caller, key)
    /// order; returns for each, in the order given, whether it was inserted (false: it
    /// existed). On PostgreSQL a key another transaction holds makes this wait for it to end.
    fn insert_keys(
        &mut self,
        records: &[KeyRecord],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;
    /// The recorded keys among `keys` (caller, key) of `scope`, in no particular order.
    fn find_keys(
        &mut self,
        scope: Scope,
        keys: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
    /// Deletes keys (caller, key) of `scope`.
    fn delete_keys(
        &mut self,
        scope: Scope,
        keys: &[(&str, &str)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The payments among `payment_ids`, in no particular order.
    fn payments_by_id(
        &mut self,
        payment_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Payment>, StoreError>> + Send;
    /// Reads and locks the accounts among `account_ids` (sorted, distinct), locking in
    /// ascending id order (byte order), the order every transaction of the store locks in.
    fn lock_accounts(
        &mut self,
        account_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Account>, StoreError>> + Send;
    /// Sets the balances of existing accounts.
    fn set_balances(
        &mut self,
        balances: &[(&str, i64)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Inserts payments.
    fn insert_payments(
        &mut self,
        payments: &[Payment],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes the two ledger entries of each transfer of `kind`, debit then credit.
    fn insert_transfers(
        &mut self,
        kind: Scope,
        transfers: &[Transfer<'_>],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

fn metadata_json(payment: &Payment) -> Result<String, StoreError> {
    serde_json::to_string(&payment.metadata).map_err(|error| StoreError::Internal(Box::new(error)))
}

impl BatchStatements for sqlx::PgConnection {
    async fn insert_keys(&mut self, records: &[KeyRecord]) -> Result<Vec<bool>, StoreError> {
        let Some(first) = records.first() else {
            return Ok(Vec::new());
        };
        let column = |field: fn(&KeyRecord) -> &str| records.iter().map(field).collect::<Vec<_>>();
        let created: Vec<i64> = records.iter().map(|record| record.created_at_us).collect();
        let inserted = sqlx::query_as(
            "INSERT INTO idempotency_keys \
             (scope, caller, idempotency_key, fingerprint, resource_id, created_at_us) \
             SELECT $1, k.caller, k.key, k.fingerprint, k.resource_id, k.created_at_us \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
               AS k(caller, key, fingerprint, resource_id, created_at_us) \
             ORDER BY k.caller COLLATE \"C\", k.key COLLATE \"C\" \
             ON CONFLICT DO NOTHING RETURNING caller, idempotency_key",
        )
        .bind(first.scope.as_str())
        .bind(column(|record| &record.caller))
        .bind(column(|record| &record.key))
        .bind(column(|record| &record.fingerprint))
        .bind(column(|record| &record.resource_id))
        .bind(created)
        .fetch_all(&mut *self)
        .await?;
        Ok(claimed(records, inserted))
    }

    async fn find_keys(
        &mut self,
        scope: Scope,
        keys: &[(&str, &str)],
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let (callers, keys): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT k.caller, k.idempotency_key, k.fingerprint, k.resource_id, k.created_at_us \
             FROM idempotency_keys k \
             JOIN unnest($2::text[], $3::text[]) AS w(caller, key) \
               ON k.caller = w.caller AND k.idempotency_key = w.key \
             WHERE k.scope = $1",
        )
        .bind(scope.as_str())
        .bind(callers)
        .bind(keys)
        .fetch_all(&mut *self)
        .await?;
        rows.iter()
            .map(|row| statements::postgres::key_from_row(scope, row))
            .collect()
    }

    async fn delete_keys(&mut self, scope: Scope, keys: &[(&str, &str)]) -> Result<(), StoreError> {
        let (callers, keys): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        sqlx::query(
            "DELETE FROM idempotency_keys k \
             USING unnest($2::text[], $3::text[]) AS w(caller, key) \
             WHERE k.scope = $1 AND k.caller = w.caller AND k.idempotency_key = w.key",
        )
        .bind(scope.as_str())
        .bind(callers)
        .bind(keys)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn payments_by_id(&mut self, payment_ids: &[&str]) -> Result<Vec<Payment>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments WHERE payment_id = ANY($1)"
        ))
        .bind(payment_ids)
        .fetch_all(&mut *self)
        .await?
        .iter()
        .map(statements::postgres::payment_from_row)
        .collect()
    }

    async fn lock_accounts(&mut self, account_ids: &[&str]) -> Result<Vec<Account>, StoreError> {
        // The sort runs below the row locks, so rows are locked in this order; "C" collation
        // is byte order, the order of Rust's `str` and of the single-payment path.
        sqlx::query(
            "SELECT account_id, currency, balance_minor, created_at_us, owner FROM accounts \
             WHERE account_id = ANY($1) ORDER BY account_id COLLATE \"C\" FOR UPDATE",
        )
        .bind(account_ids)
        .fetch_all(&mut *self)
        .await?
        .iter()
        .map(statements::postgres::account_from_row)
        .collect()
    }

    async fn set_balances(&mut self, balances: &[(&str, i64)]) -> Result<(), StoreError> {
        let ids: Vec<&str> = balances.iter().map(|(id, _)| *id).collect();
        let amounts: Vec<i64> = balances.iter().map(|(_, amount)| *amount).collect();
        let updated = sqlx::query(
            "UPDATE accounts SET balance_minor = b.balance_minor \
             FROM unnest($1::text[], $2::int8[]) AS b(account_id, balance_minor) \
             WHERE accounts.account_id = b.account_id",
        )
        .bind(ids)
        .bind(amounts)
        .execute(&mut *self)
        .await?;
        expect_rows(updated.rows_affected(), balances.len(), "balance update")
    }

    async fn insert_payments(&mut self, payments: &[Payment]) -> Result<(), StoreError> {
        let text = |field: fn(&Payment) -> &str| payments.iter().map(field).collect::<Vec<_>>();
        let int = |field: fn(&Payment) -> i64| payments.iter().map(field).collect::<Vec<_>>();
        let metadata = payments
            .iter()
            .map(metadata_json)
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(concat!(
            "INSERT INTO payments (",
            payment_columns!(),
            ") SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::int8[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[])"
        ))
        .bind(text(|p| &p.payment_id))
        .bind(text(|p| &p.idempotency_key))
        .bind(text(|p| &p.payer_account_id))
        .bind(text(|p| &p.payee_account_id))
        .bind(int(|p| p.amount_minor))
        .bind(text(|p| &p.currency))
        .bind(text(|p| &p.description))
        .bind(metadata)
        .bind(int(|p| p.refunded_minor))
        .bind(int(|p| time_to_us(p.created_at)))
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn insert_transfers(
        &mut self,
        kind: Scope,
        transfers: &[Transfer<'_>],
    ) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(2 * transfers.len());
        let mut accounts = Vec::with_capacity(2 * transfers.len());
        let mut currencies = Vec::with_capacity(2 * transfers.len());
        let mut amounts = Vec::with_capacity(2 * transfers.len());
        let mut created = Vec::with_capacity(2 * transfers.len());
        for transfer in transfers {
            for (account, amount) in [
                (transfer.debit, -transfer.amount_minor),
                (transfer.credit, transfer.amount_minor),
            ] {
                ids.push(transfer.transfer_id);
                accounts.push(account);
                currencies.push(transfer.currency);
                amounts.push(amount);
                created.push(transfer.created_at_us);
            }
        }
        sqlx::query(
            "INSERT INTO ledger_entries \
             (transfer_id, kind, account_id, currency, amount_minor, created_at_us) \
             SELECT e.transfer_id, $1, e.account_id, e.currency, e.amount_minor, e.created_at_us \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[]) \
               WITH ORDINALITY AS e(transfer_id, account_id, currency, amount_minor, \
                                    created_at_us, n) \
             ORDER BY e.n",
        )
        .bind(kind.as_str())
        .bind(ids)
        .bind(accounts)
        .bind(currencies)
        .bind(amounts)
        .bind(created)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}

/// SQLite takes a batch's rows as one JSON array bound as a parameter and expanded with
/// `json_each`, PostgreSQL's `unnest` in SQLite's words. A statement is a library call here,
/// not a network round trip, but sqlx runs each on the connection's worker thread: one
/// statement per row cost two thread hand-offs per row, which made SQLite's server CPU per
/// payment six times PostgreSQL's. Write transactions are serialized, so there are no row
/// locks to order.
impl BatchStatements for sqlx::SqliteConnection {
    async fn insert_keys(&mut self, records: &[KeyRecord]) -> Result<Vec<bool>, StoreError> {
        let Some(first) = records.first() else {
            return Ok(Vec::new());
        };
        let rows = json_rows(records.iter().map(|record| {
            (
                &record.caller,
                &record.key,
                &record.fingerprint,
                &record.resource_id,
                record.created_at_us,
            )
        }))?;
        let inserted = sqlx::query_as(
            "INSERT INTO idempotency_keys \
             (scope, caller, idempotency_key, fingerprint, resource_id, created_at_us) \
             SELECT $1, k.value ->> 0, k.value ->> 1, k.value ->> 2, k.value ->> 3, \
                    k.value ->> 4 \
             FROM json_each($2) AS k ORDER BY k.key \
             ON CONFLICT DO NOTHING RETURNING caller, idempotency_key",
        )
        .bind(first.scope.as_str())
        .bind(rows)
        .fetch_all(&mut *self)
        .await?;
        Ok(claimed(records, inserted))
    }

    async fn find_keys(
        &mut self,
        scope: Scope,
        keys: &[(&str, &str)],
    ) -> Result<Vec<KeyRecord>, StoreError> {
        // `IN` over row values, not a join: the planner then probes the primary key once per
        // wanted key instead of scanning the scope.
        let rows = sqlx::query(
            "SELECT caller, idempotency_key, fingerprint, resource_id, created_at_us \
             FROM idempotency_keys \
             WHERE scope = $1 AND (caller, idempotency_key) IN \
               (SELECT w.value ->> 0, w.value ->> 1 FROM json_each($2) AS w)",
        )
        .bind(scope.as_str())
        .bind(json_rows(keys.iter())?)
        .fetch_all(&mut *self)
        .await?;
        rows.iter()
            .map(|row| statements::sqlite::key_from_row(scope, row))
            .collect()
    }

    async fn delete_keys(&mut self, scope: Scope, keys: &[(&str, &str)]) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE scope = $1 AND (caller, idempotency_key) IN \
               (SELECT w.value ->> 0, w.value ->> 1 FROM json_each($2) AS w)",
        )
        .bind(scope.as_str())
        .bind(json_rows(keys.iter())?)
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn payments_by_id(&mut self, payment_ids: &[&str]) -> Result<Vec<Payment>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            payment_columns!(),
            " FROM payments WHERE payment_id IN (SELECT value FROM json_each($1))"
        ))
        .bind(json_rows(payment_ids.iter())?)
        .fetch_all(&mut *self)
        .await?
        .iter()
        .map(statements::sqlite::payment_from_row)
        .collect()
    }

    async fn lock_accounts(&mut self, account_ids: &[&str]) -> Result<Vec<Account>, StoreError> {
        sqlx::query(
            "SELECT account_id, currency, balance_minor, created_at_us, owner FROM accounts \
             WHERE account_id IN (SELECT value FROM json_each($1))",
        )
        .bind(json_rows(account_ids.iter())?)
        .fetch_all(&mut *self)
        .await?
        .iter()
        .map(statements::sqlite::account_from_row)
        .collect()
    }

    async fn set_balances(&mut self, balances: &[(&str, i64)]) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE accounts SET balance_minor = b.value ->> 1 \
             FROM json_each($1) AS b WHERE accounts.account_id = b.value ->> 0",
        )
        .bind(json_rows(balances.iter())?)
        .execute(&mut *self)
        .await?;
        expect_rows(updated.rows_affected(), balances.len(), "balance update")
    }

    async fn insert_payments(&mut self, payments: &[Payment]) -> Result<(), StoreError> {
        let metadata = payments
            .iter()
            .map(metadata_json)
            .collect::<Result<Vec<_>, _>>()?;
        let rows = json_rows(payments.iter().zip(&metadata).map(|(p, metadata)| {
            (
                &p.payment_id,
                &p.idempotency_key,
                &p.payer_account_id,
                &p.payee_account_id,
                p.amount_minor,
                &p.currency,
                &p.description,
                metadata,
                p.refunded_minor,
                time_to_us(p.created_at),
            )
        }))?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO payments (",
            payment_columns!(),
            ") SELECT p.value ->> 0, p.value ->> 1, p.value ->> 2, p.value ->> 3, \
             p.value ->> 4, p.value ->> 5, p.value ->> 6, p.value ->> 7, p.value ->> 8, \
             p.value ->> 9 FROM json_each($1) AS p ORDER BY p.key"
        ))
        .bind(rows)
        .execute(&mut *self)
        .await?;
        expect_rows(inserted.rows_affected(), payments.len(), "payment insert")
    }

    async fn insert_transfers(
        &mut self,
        kind: Scope,
        transfers: &[Transfer<'_>],
    ) -> Result<(), StoreError> {
        let entries = json_rows(transfers.iter().flat_map(|transfer| {
            [
                (transfer.debit, -transfer.amount_minor),
                (transfer.credit, transfer.amount_minor),
            ]
            .map(|(account, amount)| {
                (
                    transfer.transfer_id,
                    account,
                    transfer.currency,
                    amount,
                    transfer.created_at_us,
                )
            })
        }))?;
        sqlx::query(
            "INSERT INTO ledger_entries \
             (transfer_id, kind, account_id, currency, amount_minor, created_at_us) \
             SELECT e.value ->> 0, $1, e.value ->> 1, e.value ->> 2, e.value ->> 3, \
                    e.value ->> 4 \
             FROM json_each($2) AS e ORDER BY e.key",
        )
        .bind(kind.as_str())
        .bind(entries)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}

/// `rows` as one JSON array (a tuple is an array of its fields), for `json_each`.
fn json_rows<T: Serialize>(rows: impl Iterator<Item = T>) -> Result<String, StoreError> {
    let rows: Vec<T> = rows.collect();
    serde_json::to_string(&rows).map_err(|error| StoreError::Internal(Box::new(error)))
}

/// For each of `records`, in order, whether it is among the keys an insert returned (caller,
/// key): the rows of `RETURNING` come in no particular order.
fn claimed(records: &[KeyRecord], inserted: Vec<(String, String)>) -> Vec<bool> {
    let inserted: HashSet<(String, String)> = inserted.into_iter().collect();
    records
        .iter()
        .map(|record| inserted.contains(&(record.caller.clone(), record.key.clone())))
        .collect()
}

fn expect_rows(changed: u64, expected: usize, what: &str) -> Result<(), StoreError> {
    if usize::try_from(changed) == Ok(expected) {
        Ok(())
    } else {
        Err(StoreError::internal(format!(
            "{what} changed {changed} rows, not {expected}"
        )))
    }
}
