//! The ledger check: after a run, the service must hold exactly the payments whose outcome
//! was OK, each once and as requested, none for any other request, and balances that follow
//! from them to the minor unit.

use std::collections::{BTreeMap, HashMap, HashSet};

use tonic::transport::Channel;

use super::accounts::{CallError, balance, payments_of};
use crate::pb::v1::Payment;

/// Most problems listed one by one; the rest are counted.
const MAX_LISTED: usize = 20;

/// A payment the ledger must hold once: a request whose outcome was OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPayment {
    /// The idempotency key the service recorded it under, `{device}:{request id}`.
    pub key: String,
    /// The account debited.
    pub payer: String,
    /// The account credited.
    pub payee: String,
    /// The amount, in minor units.
    pub amount: i64,
    /// The payment id the outcome named, if it named one.
    pub payment_id: Option<String>,
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Payments the run's accounts paid or received.
    pub payments: usize,
    /// What does not match, one sentence each (the first twenty, then a count of the
    /// rest); empty when the ledger is exactly as expected.
    pub problems: Vec<String>,
}

impl LedgerCheck {
    fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }
}

/// Checks the ledger against a run: `accounts` are every account of the run, each with what
/// it was funded with, and `expected` the payments it must hold. Reads every payment of
/// those accounts (ListPayments, to the last page) and their balances (GetAccount), as the
/// anonymous caller that created them. Finds:
/// - an expected payment missing, held more than once under its key, or other than
///   requested (payer, payee, amount, or another payment id than its outcome named);
/// - a payment under any other key: money moved for a request with no OK outcome (a
///   refused one, one whose outcome never came, or none of the run's);
/// - a balance other than its funding minus the expected payments out plus those in.
///
/// An error is a call that failed: the check could not be made.
pub async fn check_ledger(
    channel: &Channel,
    accounts: &[(String, i64)],
    expected: &[ExpectedPayment],
) -> Result<LedgerCheck, CallError> {
    let mut listed: BTreeMap<String, Payment> = BTreeMap::new();
    for (account, _) in accounts {
        for payment in payments_of(channel, account).await? {
            listed.insert(payment.payment_id.clone(), payment);
        }
    }
    let mut by_key: HashMap<&str, Vec<&Payment>> = HashMap::new();
    for payment in listed.values() {
        by_key
            .entry(payment.idempotency_key.as_str())
            .or_default()
            .push(payment);
    }
    let mut check = LedgerCheck {
        payments: listed.len(),
        problems: Vec::new(),
    };

    for want in expected {
        match by_key.get(want.key.as_str()).map(Vec::as_slice) {
            None | Some([]) => check.problem(format!(
                "no payment under key {}, whose outcome was OK",
                want.key
            )),
            Some([held]) => {
                if (
                    held.payer_account_id.as_str(),
                    held.payee_account_id.as_str(),
                ) != (want.payer.as_str(), want.payee.as_str())
                    || held.amount_minor != want.amount
                {
                    check.problem(format!(
                        "payment {} under key {} moved {} from {} to {}; the request asked for \
                         {} from {} to {}",
                        held.payment_id,
                        want.key,
                        held.amount_minor,
                        held.payer_account_id,
                        held.payee_account_id,
                        want.amount,
                        want.payer,
                        want.payee
                    ));
                }
                if let Some(id) = &want.payment_id
                    && *id != held.payment_id
                {
                    check.problem(format!(
                        "the outcome of {} named payment {id}, the ledger holds {}",
                        want.key, held.payment_id
                    ));
                }
            }
            Some(many) => {
                let ids: Vec<&str> = many.iter().map(|p| p.payment_id.as_str()).collect();
                check.problem(format!(
                    "{} payments under key {}: money moved more than once ({})",
                    many.len(),
                    want.key,
                    ids.join(", ")
                ));
            }
        }
    }
    let wanted: HashSet<&str> = expected.iter().map(|want| want.key.as_str()).collect();
    for payment in listed.values() {
        if !wanted.contains(payment.idempotency_key.as_str()) {
            check.problem(format!(
                "payment {} under key {:?} moved {} from {} to {}, though no OK outcome was \
                 seen for that key",
                payment.payment_id,
                payment.idempotency_key,
                payment.amount_minor,
                payment.payer_account_id,
                payment.payee_account_id
            ));
        }
    }

    let mut should_hold: HashMap<&str, (i64, usize, usize)> = accounts
        .iter()
        .map(|(account, funded)| (account.as_str(), (*funded, 0, 0)))
        .collect();
    for want in expected {
        if let Some((balance, out, _)) = should_hold.get_mut(want.payer.as_str()) {
            *balance -= want.amount;
            *out += 1;
        }
        if let Some((balance, _, into)) = should_hold.get_mut(want.payee.as_str()) {
            *balance += want.amount;
            *into += 1;
        }
    }
    for (account, funded) in accounts {
        let (should, out, into) = should_hold[account.as_str()];
        let holds = balance(channel, account).await?;
        if holds != should {
            check.problem(format!(
                "{account} holds {holds}, expected {should} (funded with {funded}, {out} OK \
                 payments out, {into} in)"
            ));
        }
    }

    if check.problems.len() > MAX_LISTED {
        let more = check.problems.len() - MAX_LISTED;
        check.problems.truncate(MAX_LISTED);
        check.problem(format!("and {more} more problems"));
    }
    Ok(check)
}
