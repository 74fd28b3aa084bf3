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
//! 3. **Check, then write**: ownership of the account money leaves (on the row just locked:
//!    the check and the debit cannot be separated by another transaction), balances with
//!    checked arithmetic, the record, two ledger entries summing to zero. Any error rolls the whole transaction back, key included, so a failed
//!    request can be retried with its key once the cause is fixed.
//!
//! Keys are the caller's: `(scope, caller, key)` is what is claimed, so a caller never
//! replays, nor is refused by, a key another caller used.

use std::collections::{BTreeMap, HashMap};

use super::batch_statements::{BatchStatements, Transfer};
use super::error::StoreError;
use super::fingerprint;
use super::ids::new_id;
use super::model::{Account, Idempotent, Payment, PaymentRequest};
use super::records::{
    DepositRecord, Entry, KeyRecord, RefundRecord, Scope, key_caller, now_us, time_from_us,
};
use super::statements::Statements;

/// Opens an account with a zero balance, owned by `owner` (`None`: anonymous).
pub(crate) async fn create_account<C: Statements>(
    conn: &mut C,
    account_id: Option<&str>,
    currency: &str,
    owner: Option<&str>,
) -> Result<Account, StoreError> {
    let account = Account {
        account_id: account_id.map_or_else(|| new_id("acct"), str::to_owned),
        currency: currency.to_owned(),
        balance_minor: 0,
        created_at: time_from_us(now_us()),
        owner: owner.map(str::to_owned),
    };
    if conn.insert_account(&account).await? {
        Ok(account)
    } else {
        Err(StoreError::AccountExists {
            account_id: account.account_id,
        })
    }
}

/// Credits an account with money from outside: the counter-entry is the world. Anyone may
/// credit any account; `caller` only owns the key.
pub(crate) async fn deposit<C: Statements>(
    conn: &mut C,
    account_id: &str,
    amount_minor: i64,
    idempotency_key: &str,
    caller: Option<&str>,
) -> Result<Idempotent<Account>, StoreError> {
    ensure_positive(amount_minor)?;
    let fingerprint = fingerprint::deposit(account_id, amount_minor);
    let key = match claim_key(
        conn,
        Scope::Deposit,
        caller,
        idempotency_key,
        fingerprint,
        "dep",
    )
    .await?
    {
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

/// Moves money from the payer, which must be the caller's, to the payee.
pub(crate) async fn process<C: Statements>(
    conn: &mut C,
    request: &PaymentRequest,
) -> Result<Idempotent<Payment>, StoreError> {
    ensure_positive(request.amount_minor)?;
    let fingerprint = fingerprint::payment(request);
    let key = match claim_key(
        conn,
        Scope::Payment,
        request.caller.as_deref(),
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
    accounts.pay(request)?;
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

/// What each payment of a batch came to, in the batch's order.
pub(crate) type BatchOutcomes = Vec<Result<Idempotent<Payment>, StoreError>>;

/// Processes many payments in one transaction, as if [`process`] ran for each in turn: the
/// same checks in the same order, each seeing the balances the ones before it left. Set-based
/// statements make it a fixed number of round trips whatever the batch's size: claim the keys,
/// read the keys that existed and the payments they replay, lock the accounts, then write
/// balances, payments and ledger entries once each.
///
/// A payment refused by a business rule gets its error and its key is removed again, so the
/// transaction keeps no trace of it; the others go on. The outer error is for the whole
/// transaction (storage unavailable, a conflict): nothing may be committed then.
///
/// The idempotency keys must be distinct per caller: a key claimed twice in one transaction would be
/// reported as used by a payment that is not committed yet.
pub(crate) async fn process_batch<C: BatchStatements>(
    conn: &mut C,
    requests: &[&PaymentRequest],
) -> Result<BatchOutcomes, StoreError> {
    let mut outcomes: Vec<Option<Result<Idempotent<Payment>, StoreError>>> =
        requests.iter().map(|_| None).collect();
    let created_at_us = now_us();
    let mut keys = Vec::with_capacity(requests.len());
    let mut keyed = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        if let Err(error) = ensure_positive(request.amount_minor) {
            outcomes[i] = Some(Err(error));
            continue;
        }
        keyed.push(i);
        keys.push(KeyRecord {
            scope: Scope::Payment,
            caller: key_caller(request.caller.as_deref()).to_owned(),
            key: request.idempotency_key.clone(),
            fingerprint: fingerprint::payment(request),
            resource_id: new_id("pay"),
            created_at_us,
        });
    }

    // 1. Claim the keys; the ones that existed are replays or reused keys.
    let claimed = conn.insert_keys(&keys).await?;
    let mut fresh = Vec::with_capacity(keys.len());
    let mut existing_keys = Vec::new();
    for ((&i, key), claimed) in keyed.iter().zip(&keys).zip(claimed) {
        if claimed {
            fresh.push((i, key));
        } else {
            existing_keys.push((i, key));
        }
    }
    replay_existing(conn, &existing_keys, &mut outcomes).await?;

    // 2. Lock every account involved, in ascending id order.
    let mut account_ids: Vec<&str> = fresh
        .iter()
        .flat_map(|&(i, _)| {
            [
                requests[i].payer_account_id.as_str(),
                requests[i].payee_account_id.as_str(),
            ]
        })
        .collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    let mut accounts = if account_ids.is_empty() {
        Locked::new(Vec::new())
    } else {
        Locked::new(conn.lock_accounts(&account_ids).await?)
    };

    // 3. Check and apply each payment in order, in memory.
    let mut payments = Vec::with_capacity(fresh.len());
    let mut refused_keys = Vec::new();
    for &(i, key) in &fresh {
        let request = requests[i];
        match accounts.pay(request) {
            Ok(()) => payments.push((
                i,
                Payment {
                    payment_id: key.resource_id.clone(),
                    idempotency_key: request.idempotency_key.clone(),
                    payer_account_id: request.payer_account_id.clone(),
                    payee_account_id: request.payee_account_id.clone(),
                    amount_minor: request.amount_minor,
                    currency: request.currency.clone(),
                    description: request.description.clone(),
                    metadata: request.metadata.clone(),
                    refunded_minor: 0,
                    created_at: time_from_us(created_at_us),
                },
            )),
            Err(error) => {
                outcomes[i] = Some(Err(error));
                refused_keys.push((key.caller.as_str(), key.key.as_str()));
            }
        }
    }

    // 4. Write everything once.
    if !refused_keys.is_empty() {
        conn.delete_keys(Scope::Payment, &refused_keys).await?;
    }
    let balances = accounts.changed();
    if !balances.is_empty() {
        conn.set_balances(&balances).await?;
    }
    if !payments.is_empty() {
        let (order, payments): (Vec<usize>, Vec<Payment>) = payments.into_iter().unzip();
        conn.insert_payments(&payments).await?;
        let transfers: Vec<Transfer<'_>> = payments
            .iter()
            .map(|payment| Transfer {
                transfer_id: &payment.payment_id,
                debit: &payment.payer_account_id,
                credit: &payment.payee_account_id,
                currency: &payment.currency,
                amount_minor: payment.amount_minor,
                created_at_us,
            })
            .collect();
        conn.insert_transfers(Scope::Payment, &transfers).await?;
        for (i, payment) in order.into_iter().zip(payments) {
            outcomes[i] = Some(Ok(Idempotent::fresh(payment)));
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.ok_or_else(|| StoreError::internal("a payment of the batch got no outcome"))
        })
        .collect()
}

/// Answers the payments whose key existed: the original payment (as first recorded) when the
/// parameters match, [`StoreError::IdempotencyKeyReused`] when they differ.
async fn replay_existing<C: BatchStatements>(
    conn: &mut C,
    existing_keys: &[(usize, &KeyRecord)],
    outcomes: &mut [Option<Result<Idempotent<Payment>, StoreError>>],
) -> Result<(), StoreError> {
    if existing_keys.is_empty() {
        return Ok(());
    }
    let names: Vec<(&str, &str)> = existing_keys
        .iter()
        .map(|(_, key)| (key.caller.as_str(), key.key.as_str()))
        .collect();
    let mut recorded: HashMap<(String, String), KeyRecord> = conn
        .find_keys(Scope::Payment, &names)
        .await?
        .into_iter()
        .map(|record| ((record.caller.clone(), record.key.clone()), record))
        .collect();
    let mut replays = Vec::new();
    for &(i, key) in existing_keys {
        let replayed = recorded
            .remove(&(key.caller.clone(), key.key.clone()))
            .ok_or_else(|| {
                StoreError::internal("idempotency key conflicted on insert but cannot be read")
            })
            .and_then(|record| replayed_resource(record, &key.fingerprint));
        match replayed {
            Ok(payment_id) => replays.push((i, payment_id)),
            Err(error) => outcomes[i] = Some(Err(error)),
        }
    }
    if replays.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = replays.iter().map(|(_, id)| id.as_str()).collect();
    let mut found: HashMap<String, Payment> = conn
        .payments_by_id(&ids)
        .await?
        .into_iter()
        .map(|payment| (payment.payment_id.clone(), payment))
        .collect();
    for (i, payment_id) in replays {
        outcomes[i] = Some(match found.remove(&payment_id) {
            Some(mut payment) => {
                payment.refunded_minor = 0;
                Ok(Idempotent::replay(payment))
            }
            None => Err(dangling("payment", &payment_id)),
        });
    }
    Ok(())
}

/// Returns part or all of a payment from the payee, which must be the caller's, to the payer.
pub(crate) async fn refund<C: Statements>(
    conn: &mut C,
    payment_id: &str,
    amount_minor: i64,
    idempotency_key: &str,
    caller: Option<&str>,
) -> Result<Idempotent<Payment>, StoreError> {
    ensure_positive(amount_minor)?;
    let fingerprint = fingerprint::refund(payment_id, amount_minor);
    let key = match claim_key(
        conn,
        Scope::Refund,
        caller,
        idempotency_key,
        fingerprint,
        "re",
    )
    .await?
    {
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
    // The money leaves the payee's account: only its owner may send it back, and learns
    // nothing of the payment's refunds before that is settled.
    let (payer, payee) = (&payment.payer_account_id, &payment.payee_account_id);
    let mut accounts = Locked::lock(conn, [payer, payee]).await?;
    accounts.ensure_owned(payee, caller)?;
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

/// Claims `key` of `caller` (`None`: anonymous) for `scope`.
async fn claim_key<C: Statements>(
    conn: &mut C,
    scope: Scope,
    caller: Option<&str>,
    key: &str,
    fingerprint: String,
    id_prefix: &str,
) -> Result<Claim, StoreError> {
    let caller = key_caller(caller);
    if let Some(existing) = conn.find_key(scope, caller, key).await? {
        return replay_of(existing, &fingerprint);
    }
    let record = KeyRecord {
        scope,
        caller: caller.to_owned(),
        key: key.to_owned(),
        fingerprint,
        resource_id: new_id(id_prefix),
        created_at_us: now_us(),
    };
    if conn.insert_key(&record).await? {
        return Ok(Claim::Claimed(record));
    }
    // A concurrent request with this key committed between our read and our insert.
    let existing = conn.find_key(scope, caller, key).await?.ok_or_else(|| {
        StoreError::internal("idempotency key conflicted on insert but cannot be read")
    })?;
    replay_of(existing, &record.fingerprint)
}

fn replay_of(existing: KeyRecord, fingerprint: &str) -> Result<Claim, StoreError> {
    replayed_resource(existing, fingerprint).map(Claim::Replay)
}

/// The record a recorded key produced, if it was recorded with these parameters.
fn replayed_resource(existing: KeyRecord, fingerprint: &str) -> Result<String, StoreError> {
    if existing.fingerprint == fingerprint {
        Ok(existing.resource_id)
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

/// Locked accounts, with their balances as the transfers so far change them.
struct Locked {
    accounts: BTreeMap<String, Account>,
    /// The balances as locked, to write back only what changed.
    locked_balances: BTreeMap<String, i64>,
}

impl Locked {
    /// Locks the accounts of one transfer, one by one in ascending id order.
    async fn lock<C: Statements>(conn: &mut C, account_ids: [&str; 2]) -> Result<Self, StoreError> {
        let mut ids = account_ids;
        ids.sort_unstable();
        let mut accounts = Vec::with_capacity(2);
        for (i, account_id) in ids.iter().enumerate() {
            if i > 0 && ids[i - 1] == *account_id {
                continue;
            }
            accounts.extend(conn.lock_account(account_id).await?);
        }
        Ok(Self::new(accounts))
    }

    fn new(accounts: Vec<Account>) -> Self {
        let locked_balances = accounts
            .iter()
            .map(|account| (account.account_id.clone(), account.balance_minor))
            .collect();
        let accounts = accounts
            .into_iter()
            .map(|account| (account.account_id.clone(), account))
            .collect();
        Self {
            accounts,
            locked_balances,
        }
    }

    fn get(&self, account_id: &str) -> Result<&Account, StoreError> {
        self.accounts
            .get(account_id)
            .ok_or_else(|| StoreError::AccountNotFound {
                account_id: account_id.to_owned(),
            })
    }

    fn get_mut(&mut self, account_id: &str) -> Result<&mut Account, StoreError> {
        self.accounts
            .get_mut(account_id)
            .ok_or_else(|| StoreError::AccountNotFound {
                account_id: account_id.to_owned(),
            })
    }

    /// Refuses a debit of `account_id` by a `caller` (`None`: anonymous) that does not own
    /// it.
    fn ensure_owned(&self, account_id: &str, caller: Option<&str>) -> Result<(), StoreError> {
        if self.get(account_id)?.is_owned_by(caller) {
            Ok(())
        } else {
            Err(StoreError::AccountNotOwned {
                account_id: account_id.to_owned(),
            })
        }
    }

    /// Applies a payment's checks in the order callers see them (payer exists, the caller
    /// owns it, payee exists, currencies, funds), then its transfer; on error nothing
    /// changed. Ownership comes before anything that tells of the payer's currency or
    /// balance.
    fn pay(&mut self, request: &PaymentRequest) -> Result<(), StoreError> {
        let (payer, payee) = (&request.payer_account_id, &request.payee_account_id);
        self.ensure_owned(payer, request.caller.as_deref())?;
        self.get(payee)?;
        for account_id in [payer, payee] {
            let account = self.get(account_id)?;
            if account.currency != request.currency {
                return Err(StoreError::CurrencyMismatch {
                    account_id: account.account_id.clone(),
                    account_currency: account.currency.clone(),
                    requested_currency: request.currency.clone(),
                });
            }
        }
        self.transfer(payer, payee, request.amount_minor)
    }

    /// Debits `from` and credits `to`, refusing an overdraft or an overflow; on error nothing
    /// changed.
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
        match credited.balance_minor.checked_add(amount_minor) {
            Some(balance) => {
                credited.balance_minor = balance;
                Ok(())
            }
            None => {
                self.get_mut(from)?.balance_minor += amount_minor;
                Err(StoreError::BalanceOverflow {
                    account_id: to.to_owned(),
                })
            }
        }
    }

    /// The accounts whose balance differs from when they were locked, with that balance.
    fn changed(&self) -> Vec<(&str, i64)> {
        self.accounts
            .values()
            .filter(|account| {
                self.locked_balances.get(&account.account_id) != Some(&account.balance_minor)
            })
            .map(|account| (account.account_id.as_str(), account.balance_minor))
            .collect()
    }

    /// Writes the changed balances one by one.
    async fn write<C: Statements>(&self, conn: &mut C) -> Result<(), StoreError> {
        for (account_id, balance_minor) in self.changed() {
            conn.set_balance(account_id, balance_minor).await?;
        }
        Ok(())
    }
}
