//! The ledger's operations, each meant to run inside one database transaction, written once
//! for every backend over [`Statements`].
//!
//! Every money-moving operation follows the same order, which is what makes it safe:
//! 1. **Claim the idempotency key** (insert it, with the parameters' fingerprint and the id of
//!    the record about to be created). If it exists, this is a replay or a reused key, and
//!    nothing is locked or moved. On PostgreSQL a concurrent transaction holding the same key
//!    makes the insert wait until it ends; the loser then sees its key and replays its result.
//!    A transaction waiting here holds no row lock, so it cannot be part of a deadlock.
//! 2. **Lock the rows to change**: the payment (refunds), then the accounts in ascending id
//!    order. Every transaction locks in this one order, so two never wait on each other.
//! 3. **Check, then write**: balances with checked arithmetic, the record, two ledger entries
//!    summing to zero. Any error rolls the whole transaction back, key included, so a failed
//!    request can be retried with its key once the cause is fixed.

use super::error::StoreError;
use super::fingerprint;
use super::ids::new_id;
use super::model::{Account, Idempotent, Payment, PaymentRequest};
use super::records::{DepositRecord, Entry, KeyRecord, RefundRecord, Scope, now_us, time_from_us};
use super::statements::Statements;

/// Opens an account with a zero balance.
pub(crate) async fn create_account<C: Statements>(
    conn: &mut C,
    account_id: Option<&str>,
    currency: &str,
) -> Result<Account, StoreError> {
    let account = Account {
        account_id: account_id.map_or_else(|| new_id("acct"), str::to_owned),
        currency: currency.to_owned(),
        balance_minor: 0,
        created_at: time_from_us(now_us()),
    };
    if conn.insert_account(&account).await? {
        Ok(account)
    } else {
        Err(StoreError::AccountExists {
            account_id: account.account_id,
        })
    }
}

/// Credits an account with money from outside: the counter-entry is the world.
pub(crate) async fn deposit<C: Statements>(
    conn: &mut C,
    account_id: &str,
    amount_minor: i64,
    idempotency_key: &str,
) -> Result<Idempotent<Account>, StoreError> {
    ensure_positive(amount_minor)?;
    let fingerprint = fingerprint::deposit(account_id, amount_minor);
    let key = match claim_key(conn, Scope::Deposit, idempotency_key, fingerprint, "dep").await? {
        Claim::Replay(deposit_id) => {
            return replay_deposit(conn, &deposit_id)
                .await
                .map(Idempotent::replay);
        }
        Claim::Claimed(key) => key,
    };

    let mut account =
        conn.lock_account(account_id)
            .await?
            .ok_or_else(|| StoreError::AccountNotFound {
                account_id: account_id.to_owned(),
            })?;
    account.balance_minor = account
        .balance_minor
        .checked_add(amount_minor)
        .ok_or_else(|| StoreError::BalanceOverflow {
            account_id: account_id.to_owned(),
        })?;
    conn.set_balance(account_id, account.balance_minor).await?;
    conn.insert_deposit(&DepositRecord {
        deposit_id: key.resource_id.clone(),
        account_id: account_id.to_owned(),
        amount_minor,
        balance_after_minor: account.balance_minor,
        created_at_us: key.created_at_us,
    })
    .await?;
    let entries = [
        Entry {
            account_id: None,
            amount_minor: -amount_minor,
        },
        Entry {
            account_id: Some(account_id),
            amount_minor,
        },
    ];
    conn.insert_entries(
        &key.resource_id,
        Scope::Deposit,
        &account.currency,
        entries,
        key.created_at_us,
    )
    .await?;
    Ok(Idempotent::fresh(account))
}

/// Moves money from the payer to the payee.
pub(crate) async fn process<C: Statements>(
    conn: &mut C,
    request: &PaymentRequest,
) -> Result<Idempotent<Payment>, StoreError> {
    ensure_positive(request.amount_minor)?;
    let fingerprint = fingerprint::payment(request);
    let key = match claim_key(
        conn,
        Scope::Payment,
        &request.idempotency_key,
        fingerprint,
        "pay",
    )
    .await?
    {
        Claim::Replay(payment_id) => {
            return replay_payment(conn, &payment_id)
                .await
                .map(Idempotent::replay);
        }
        Claim::Claimed(key) => key,
    };

    let (payer, payee) = (&request.payer_account_id, &request.payee_account_id);
    let mut accounts = Locked::lock(conn, [payer, payee]).await?;
    for account_id in [payer, payee] {
        accounts.get(account_id)?;
    }
    for account_id in [payer, payee] {
        let account = accounts.get(account_id)?;
        if account.currency != request.currency {
            return Err(StoreError::CurrencyMismatch {
                account_id: account.account_id.clone(),
                account_currency: account.currency.clone(),
                requested_currency: request.currency.clone(),
            });
        }
    }
    accounts.transfer(payer, payee, request.amount_minor)?;
    accounts.write(conn).await?;

    let payment = Payment {
        payment_id: key.resource_id,
        idempotency_key: request.idempotency_key.clone(),
        payer_account_id: payer.clone(),
        payee_account_id: payee.clone(),
        amount_minor: request.amount_minor,
        currency: request.currency.clone(),
        description: request.description.clone(),
        metadata: request.metadata.clone(),
        refunded_minor: 0,
        created_at: time_from_us(key.created_at_us),
    };
    conn.insert_payment(&payment).await?;
    let entries = [
        Entry {
            account_id: Some(payer),
            amount_minor: -payment.amount_minor,
        },
        Entry {
            account_id: Some(payee),
            amount_minor: payment.amount_minor,
        },
    ];
    conn.insert_entries(
        &payment.payment_id,
        Scope::Payment,
        &payment.currency,
        entries,
        key.created_at_us,
    )
    .await?;
    Ok(Idempotent::fresh(payment))
}

/// Returns part or all of a payment from the payee to the payer.
pub(crate) async fn refund<C: Statements>(
    conn: &mut C,
    payment_id: &str,
    amount_minor: i64,
    idempotency_key: &str,
) -> Result<Idempotent<Payment>, StoreError> {
    ensure_positive(amount_minor)?;
    let fingerprint = fingerprint::refund(payment_id, amount_minor);
    let key = match claim_key(conn, Scope::Refund, idempotency_key, fingerprint, "re").await? {
        Claim::Replay(refund_id) => {
            return replay_refund(conn, &refund_id)
                .await
                .map(Idempotent::replay);
        }
        Claim::Claimed(key) => key,
    };

    let mut payment =
        conn.lock_payment(payment_id)
            .await?
            .ok_or_else(|| StoreError::PaymentNotFound {
                payment_id: payment_id.to_owned(),
            })?;
    let refunded_after = payment
        .refunded_minor
        .checked_add(amount_minor)
        .filter(|total| *total <= payment.amount_minor)
        .ok_or_else(|| StoreError::RefundExceedsPayment {
            payment_id: payment_id.to_owned(),
            amount_minor: payment.amount_minor,
            refunded_minor: payment.refunded_minor,
            requested_minor: amount_minor,
        })?;

    let (payer, payee) = (&payment.payer_account_id, &payment.payee_account_id);
    let mut accounts = Locked::lock(conn, [payer, payee]).await?;
    accounts.transfer(payee, payer, amount_minor)?;
    accounts.write(conn).await?;
    conn.set_refunded(payment_id, refunded_after).await?;
    conn.insert_refund(&RefundRecord {
        refund_id: key.resource_id.clone(),
        payment_id: payment_id.to_owned(),
        amount_minor,
        refunded_after_minor: refunded_after,
        created_at_us: key.created_at_us,
    })
    .await?;
    let entries = [
        Entry {
            account_id: Some(payee),
            amount_minor: -amount_minor,
        },
        Entry {
            account_id: Some(payer),
            amount_minor,
        },
    ];
    conn.insert_entries(
        &key.resource_id,
        Scope::Refund,
        &payment.currency,
        entries,
        key.created_at_us,
    )
    .await?;
    payment.refunded_minor = refunded_after;
    Ok(Idempotent::fresh(payment))
}

/// The service validates amounts; this keeps a bug there from reaching the ledger (where the
/// CHECK constraints would refuse it too).
fn ensure_positive(amount_minor: i64) -> Result<(), StoreError> {
    if amount_minor > 0 {
        Ok(())
    } else {
        Err(StoreError::internal(format!(
            "amount {amount_minor} reached the store; amounts must be validated as positive"
        )))
    }
}

/// What claiming an idempotency key found.
enum Claim {
    /// The key is ours: this request executes, creating the record `resource_id`.
    Claimed(KeyRecord),
    /// The key was used with the same parameters: answer with this record again.
    Replay(String),
}

async fn claim_key<C: Statements>(
    conn: &mut C,
    scope: Scope,
    key: &str,
    fingerprint: String,
    id_prefix: &str,
) -> Result<Claim, StoreError> {
    if let Some(existing) = conn.find_key(scope, key).await? {
        return replay_of(existing, &fingerprint);
    }
    let record = KeyRecord {
        scope,
        key: key.to_owned(),
        fingerprint,
        resource_id: new_id(id_prefix),
        created_at_us: now_us(),
    };
    if conn.insert_key(&record).await? {
        return Ok(Claim::Claimed(record));
    }
    // A concurrent request with this key committed between our read and our insert.
    let existing = conn.find_key(scope, key).await?.ok_or_else(|| {
        StoreError::internal("idempotency key conflicted on insert but cannot be read")
    })?;
    replay_of(existing, &record.fingerprint)
}

fn replay_of(existing: KeyRecord, fingerprint: &str) -> Result<Claim, StoreError> {
    if existing.fingerprint == fingerprint {
        Ok(Claim::Replay(existing.resource_id))
    } else {
        Err(StoreError::IdempotencyKeyReused { key: existing.key })
    }
}

/// The account as it stood right after the deposit.
async fn replay_deposit<C: Statements>(
    conn: &mut C,
    deposit_id: &str,
) -> Result<Account, StoreError> {
    let deposit = conn
        .deposit(deposit_id)
        .await?
        .ok_or_else(|| dangling("deposit", deposit_id))?;
    let mut account = conn
        .account(&deposit.account_id)
        .await?
        .ok_or_else(|| dangling("account", &deposit.account_id))?;
    account.balance_minor = deposit.balance_after_minor;
    Ok(account)
}

/// The payment as first recorded, before any refund.
async fn replay_payment<C: Statements>(
    conn: &mut C,
    payment_id: &str,
) -> Result<Payment, StoreError> {
    let mut payment = conn
        .payment(payment_id)
        .await?
        .ok_or_else(|| dangling("payment", payment_id))?;
    payment.refunded_minor = 0;
    Ok(payment)
}

/// The payment as it stood right after the refund.
async fn replay_refund<C: Statements>(
    conn: &mut C,
    refund_id: &str,
) -> Result<Payment, StoreError> {
    let refund = conn
        .refund(refund_id)
        .await?
        .ok_or_else(|| dangling("refund", refund_id))?;
    let mut payment = conn
        .payment(&refund.payment_id)
        .await?
        .ok_or_else(|| dangling("payment", &refund.payment_id))?;
    payment.refunded_minor = refund.refunded_after_minor;
    Ok(payment)
}

fn dangling(what: &str, id: &str) -> StoreError {
    StoreError::internal(format!(
        "idempotency key refers to {what} {id:?}, which does not exist"
    ))
}

/// The accounts of one transfer, locked in ascending id order, with their balances as the
/// transfer changes them.
struct Locked {
    accounts: Vec<Account>,
}

impl Locked {
    async fn lock<C: Statements>(conn: &mut C, account_ids: [&str; 2]) -> Result<Self, StoreError> {
        let mut ids = account_ids;
        ids.sort_unstable();
        let mut accounts = Vec::with_capacity(2);
        for (i, account_id) in ids.iter().enumerate() {
            if i > 0 && ids[i - 1] == *account_id {
                continue;
            }
            if let Some(account) = conn.lock_account(account_id).await? {
                accounts.push(account);
            }
        }
        Ok(Self { accounts })
    }

    fn get(&self, account_id: &str) -> Result<&Account, StoreError> {
        self.accounts
            .iter()
            .find(|account| account.account_id == account_id)
            .ok_or_else(|| StoreError::AccountNotFound {
                account_id: account_id.to_owned(),
            })
    }

    fn get_mut(&mut self, account_id: &str) -> Result<&mut Account, StoreError> {
        self.accounts
            .iter_mut()
            .find(|account| account.account_id == account_id)
            .ok_or_else(|| StoreError::AccountNotFound {
                account_id: account_id.to_owned(),
            })
    }

    /// Debits `from` and credits `to`, refusing an overdraft or an overflow.
    fn transfer(&mut self, from: &str, to: &str, amount_minor: i64) -> Result<(), StoreError> {
        let debited = self.get_mut(from)?;
        if debited.balance_minor < amount_minor {
            return Err(StoreError::InsufficientFunds {
                account_id: from.to_owned(),
                balance_minor: debited.balance_minor,
                needed_minor: amount_minor,
            });
        }
        debited.balance_minor -= amount_minor;
        let credited = self.get_mut(to)?;
        credited.balance_minor = credited
            .balance_minor
            .checked_add(amount_minor)
            .ok_or_else(|| StoreError::BalanceOverflow {
                account_id: to.to_owned(),
            })?;
        Ok(())
    }

    async fn write<C: Statements>(&self, conn: &mut C) -> Result<(), StoreError> {
        for account in &self.accounts {
            conn.set_balance(&account.account_id, account.balance_minor)
                .await?;
        }
        Ok(())
    }
}
