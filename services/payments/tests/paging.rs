//! ListPayments pages (AIP-158) over real gRPC, on SQLite and on PostgreSQL: every page size
//! lists each payment once and in order, payments committed while a client pages never make it
//! see one twice or miss one that was there when it began, bad sizes and tokens are
//! INVALID_ARGUMENT naming the field, and a page stops short of the server's message limit.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Backend, TestDb, on_both_backends, payment};
use keel::error::Details;
use payments::pb::v1::payment_service_client::PaymentServiceClient;
use payments::pb::v1::{ListPaymentsRequest, ListPaymentsResponse, Payment};
use tonic::transport::Channel;
use tonic::{Code, Status};

on_both_backends!(
    every_page_size_lists_each_payment_once_in_order,
    payments_committed_while_paging_never_repeat_nor_hide_earlier_ones,
    bad_page_sizes_and_tokens_are_invalid_argument_on_their_field,
);

/// Where a payment sorts: creation time in microseconds, then id.
fn position(payment: &Payment) -> (i64, String) {
    let at = payment.created_at.unwrap();
    (
        at.seconds * 1_000_000 + i64::from(at.nanos) / 1_000,
        payment.payment_id.clone(),
    )
}

/// One page of `account` (`page_size` as given, `page_token` as given).
async fn page(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListPaymentsResponse, Status> {
    let request = ListPaymentsRequest {
        account_id: account.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    };
    client
        .list_payments(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Every page of `account` at `page_size`, checking each page's shape; `between` runs after
/// each page but the last.
async fn all_pages(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
    page_size: i32,
    mut between: impl AsyncFnMut(&[Payment]),
) -> Vec<Vec<Payment>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let answer = page(client, account, page_size, &token).await.unwrap();
        let most = if page_size == 0 {
            50
        } else {
            page_size as usize
        };
        assert!(answer.payments.len() <= most, "page of {page_size}");
        token = answer.next_page_token;
        if token.is_empty() {
            pages.push(answer.payments);
            return pages;
        }
        assert_eq!(answer.payments.len(), most, "a full page before the last");
        between(&answer.payments).await;
        pages.push(answer.payments);
    }
}

/// Writes a payment row with the given creation time directly, and its two ledger entries
/// (which listings read), bypassing the store and the balances: what a payment stamped at
/// `created_at_us` looks like when its transaction commits only now (a slow group-commit
/// batch, or another instance whose clock is behind). Returns its id.
async fn insert_stamped(db: &TestDb, payer: &str, payee: &str, created_at_us: i64) -> String {
    let id = format!("pay_{:032x}", rand::random::<u128>());
    let insert = format!(
        "INSERT INTO payments (payment_id, idempotency_key, payer_account_id, \
         payee_account_id, amount_minor, currency, description, metadata, refunded_minor, \
         created_at_us) VALUES ('{id}', 'raw-{id}', '{payer}', '{payee}', 1, 'USD', '', '{{}}', \
         0, {created_at_us})"
    );
    // The foreign keys lock the payer's row, then the payee's, while the ledger locks the
    // two in id order: PostgreSQL may end one of them as a deadlock, and as any client
    // would, the insert is tried again.
    for attempt in 1.. {
        match db.execute(&insert).await {
            Ok(_) => break,
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some("40P01") && attempt < 5 => {}
            Err(error) => panic!("inserting a stamped payment: {error}"),
        }
    }
    db.execute(&format!(
        "INSERT INTO ledger_entries \
         (transfer_id, kind, account_id, currency, amount_minor, created_at_us) VALUES \
         ('{id}', 'payment', '{payer}', 'USD', -1, {created_at_us}), \
         ('{id}', 'payment', '{payee}', 'USD', 1, {created_at_us})"
    ))
    .await
    .expect("inserting a stamped payment's ledger entries");
    id
}

/// The payments of `account` as the database holds them, in listing order.
async fn expected(db: &TestDb, account: &str) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = db
        .pairs(&format!(
            "SELECT payment_id, created_at_us FROM payments \
             WHERE payer_account_id = '{account}' OR payee_account_id = '{account}'"
        ))
        .await
        .into_iter()
        .map(|(id, at)| (at, id))
        .collect();
    rows.sort();
    rows
}

async fn every_page_size_lists_each_payment_once_in_order(db: &TestDb) {
    let mut client = PaymentServiceClient::new(common::api::serve(db.store.clone(), 0).await);
    let a = db.funded("USD", 1_000).await;
    let b = db.funded("USD", 1_000).await;
    let c = db.funded("USD", 1_000).await;
    let mut made = Vec::new();
    for n in 0..16 {
        let (payer, payee) = [(&a, &b), (&b, &a), (&c, &a), (&b, &c)][n % 4];
        let key = format!("p{n}");
        made.push(
            db.store
                .process(&payment(&key, payer, payee, 1))
                .await
                .unwrap()
                .value,
        );
    }
    // Payments committed together share a creation time (group commit): eight of them at the
    // time of a payment already listed, so the id orders them.
    let tied_at = db
        .i64(&format!(
            "SELECT created_at_us FROM payments WHERE payment_id = '{}'",
            made[8].payment_id
        ))
        .await;
    for n in 0..8 {
        let (payer, payee) = if n % 2 == 0 { (&a, &b) } else { (&c, &a) };
        insert_stamped(db, payer, payee, tied_at).await;
    }
    let want = expected(db, &a).await;
    assert_eq!(want.len(), 12 + 8);

    for page_size in [1, 2, 3, 7, 19, 20, 21, 0, 1000, i32::MAX] {
        let pages = all_pages(&mut client, &a, page_size, async |_| {}).await;
        let listed: Vec<_> = pages.iter().flatten().map(position).collect();
        assert_eq!(listed, want, "page_size {page_size}");
        let full = if page_size == 0 {
            50
        } else {
            page_size as usize
        };
        assert_eq!(
            pages.len(),
            want.len().div_ceil(full).max(1),
            "page_size {page_size}"
        );
    }

    // The page size may change from one page to the next.
    let first = page(&mut client, &a, 5, "").await.unwrap();
    let rest = page(&mut client, &a, 100, &first.next_page_token)
        .await
        .unwrap();
    assert!(rest.next_page_token.is_empty());
    let listed: Vec<_> = first
        .payments
        .iter()
        .chain(&rest.payments)
        .map(position)
        .collect();
    assert_eq!(listed, want);

    // An account without payments: one empty page.
    let quiet = db.account("USD").await;
    let empty = page(&mut client, &quiet, 0, "").await.unwrap();
    assert!(empty.payments.is_empty() && empty.next_page_token.is_empty());
    // No such account: NOT_FOUND, on a later page too.
    let status = page(&mut client, "ghost", 0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        Details::from_status(&status).reason(),
        Some("ACCOUNT_NOT_FOUND")
    );
}

async fn payments_committed_while_paging_never_repeat_nor_hide_earlier_ones(db: &TestDb) {
    let mut client = PaymentServiceClient::new(common::api::serve(db.store.clone(), 0).await);
    let a = db.funded("USD", 1_000_000).await;
    let b = db.funded("USD", 1_000_000).await;
    for n in 0..40 {
        let (payer, payee) = if n % 3 == 0 { (&b, &a) } else { (&a, &b) };
        let key = format!("before-{n}");
        db.store
            .process(&payment(&key, payer, payee, 1))
            .await
            .unwrap();
    }
    let tied_at = db.i64("SELECT MAX(created_at_us) FROM payments").await - 1;
    for _ in 0..5 {
        insert_stamped(db, &a, &b, tied_at).await;
    }
    let before: Vec<(i64, String)> = expected(db, &a).await;

    // Payments keep arriving from another task while the client pages (a bounded number: each
    // sorts after the pages read, so an endless stream would never let the listing end)...
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, stop, a, b) = (db.store.clone(), stop.clone(), a.clone(), b.clone());
        async move {
            let mut made = 0;
            while made < 60 && !stop.load(Ordering::Relaxed) {
                let key = format!("during-{made}");
                let (payer, payee) = if made % 2 == 0 { (&a, &b) } else { (&b, &a) };
                store
                    .process(&payment(&key, payer, payee, 1))
                    .await
                    .unwrap();
                made += 1;
            }
            made
        }
    });
    // ... and between pages, for sure: one made now, and ones stamped earlier that commit
    // only now, before the page just read and tied with its last payment.
    let mut late = Vec::new();
    let pages = all_pages(&mut client, &a, 7, async |payments: &[Payment]| {
        let (first_at, _) = position(&payments[0]);
        let (last_at, _) = position(payments.last().unwrap());
        late.push(insert_stamped(db, &b, &a, first_at - 1).await);
        late.push(insert_stamped(db, &a, &b, last_at).await);
        let key = format!("between-{first_at}");
        db.store.process(&payment(&key, &a, &b, 1)).await.unwrap();
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let made_meanwhile = writer.await.unwrap();

    let listed: Vec<(i64, String)> = pages.iter().flatten().map(position).collect();
    assert!(
        listed.windows(2).all(|pair| pair[0] < pair[1]),
        "the order went back or repeated a payment"
    );
    let seen: HashSet<&String> = listed.iter().map(|(_, id)| id).collect();
    let missing: Vec<_> = before.iter().filter(|(_, id)| !seen.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "payments there from the start were not listed: {missing:?}"
    );
    // What came later was listed when it sorts after the pages already read (always so for
    // the other task's, stamped now), never when it sorts before them.
    let by_id: BTreeMap<&String, &(i64, String)> = listed.iter().map(|p| (&p.1, p)).collect();
    assert!(
        late.iter().step_by(2).all(|id| !by_id.contains_key(id)),
        "a payment stamped before a page already read was listed"
    );
    assert!(
        listed.len() > before.len(),
        "{made_meanwhile} payments made meanwhile"
    );
}

async fn bad_page_sizes_and_tokens_are_invalid_argument_on_their_field(db: &TestDb) {
    let mut client = PaymentServiceClient::new(common::api::serve(db.store.clone(), 0).await);
    let a = db.funded("USD", 1_000).await;
    let b = db.funded("USD", 1_000).await;
    for n in 0..3 {
        let key = format!("p{n}");
        db.store.process(&payment(&key, &a, &b, 1)).await.unwrap();
    }
    let token_of_a = page(&mut client, &a, 1, "").await.unwrap().next_page_token;
    assert!(!token_of_a.is_empty());

    let violations = |status: Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let details = Details::from_status(&status);
        assert_eq!(details.reason(), Some("INVALID_REQUEST"), "{status:?}");
        details
            .field_violations()
            .iter()
            .map(|v| (v.field.clone(), v.description.clone()))
            .collect::<Vec<_>>()
    };
    let fields = |status: Status| -> Vec<String> {
        violations(status)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    };
    let status = page(&mut client, &a, -1, "").await.unwrap_err();
    let got = violations(status);
    assert_eq!(got[0].0, "page_size");
    assert!(got[0].1.contains("negative"), "{got:?}");
    for garbage in [
        "x",
        "not a token",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &"A".repeat(300),
        "%zz",
    ] {
        let status = page(&mut client, &a, 0, garbage).await.unwrap_err();
        assert_eq!(fields(status), ["page_token"], "{garbage:?}");
    }
    // A token of another account's listing.
    let status = page(&mut client, &b, 0, &token_of_a).await.unwrap_err();
    let got = violations(status);
    assert_eq!(got[0].0, "page_token");
    assert!(got[0].1.contains("another request"), "{got:?}");
    // Everything wrong at once, every violation reported.
    let status = page(&mut client, "", i32::MIN, "!").await.unwrap_err();
    assert_eq!(fields(status), ["account_id", "page_size", "page_token"]);
    // The token still works where it belongs.
    assert_eq!(
        page(&mut client, &a, 5, &token_of_a)
            .await
            .unwrap()
            .payments
            .len(),
        2
    );
}

/// A page ends before the payment that would take it past the server's message limit
/// (`limits.max_send_message_size`), and the next page goes on from there: large payments
/// never make a listing fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_stops_short_of_the_message_limit() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = common::app::config(&db.url);
    config.server.limits.max_send_message_size = 64 << 10;
    let app = common::app::RunningApp::start(config).await;
    let mut client = PaymentServiceClient::new(app.channel().await);
    let a = db.funded("USD", 1_000).await;
    let b = db.account("USD").await;
    for n in 0..12 {
        // About 21 KB each: the longest description, and 32 entries of the longest values.
        let mut big = payment(&format!("big-{n}"), &a, &b, 1);
        big.description = "d".repeat(1024);
        big.metadata = (0..32)
            .map(|k| (format!("k{k:03}"), "v".repeat(512)))
            .collect();
        db.store.process(&big).await.unwrap();
    }
    let want = expected(&db, &a).await;
    let pages = all_pages_of_any_size(&mut client, &a, 1000).await;
    assert!(
        pages.len() >= 4,
        "12 payments of 21 KB fit 64 KiB pages 2 or 3 at a time"
    );
    let listed: Vec<_> = pages.iter().flatten().map(position).collect();
    assert_eq!(listed, want);
    app.stop().await;
}

/// Every page at `page_size`, however many each holds.
async fn all_pages_of_any_size(
    client: &mut PaymentServiceClient<Channel>,
    account: &str,
    page_size: i32,
) -> Vec<Vec<Payment>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let answer = page(client, account, page_size, &token).await.unwrap();
        assert!(
            !answer.payments.is_empty(),
            "a page holds at least one payment"
        );
        pages.push(answer.payments);
        token = answer.next_page_token;
        if token.is_empty() {
            return pages;
        }
    }
}
