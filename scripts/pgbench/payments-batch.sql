-- :k payments in one transaction and one set-based statement, the shape of the store's group
-- commit (which sends the same rows in a few set-based statements): claim :k keys, insert :k
-- payments and 2 x :k ledger entries, apply the net balance change of each account once.
-- The same rows and constraints as payments-per-payment.sql; two round trips and one WAL flush
-- for :k payments.
-- Used by scripts/bench-payments.sh with `-D k=16` or `-D k=64` and one client.
BEGIN;
WITH p AS MATERIALIZED (
  SELECT md5(random()::text || clock_timestamp()::text || g::text) AS id, a AS payer,
         (a + 1 + floor(random() * 99)::int) % 100 AS payee, 1 + floor(random() * 100)::int AS amt
  FROM (SELECT g, floor(random() * 100)::int AS a FROM generate_series(1, (:k)::int) g) s),
keys AS (INSERT INTO idempotency_keys SELECT 'payment', 'k' || id, 'fp', 'p' || id, 0 FROM p ON CONFLICT DO NOTHING RETURNING 1),
pay AS (INSERT INTO payments SELECT 'p' || id, 'k' || id, 'a' || payer, 'a' || payee, amt, 'EUR', 'bench', '{}', 0, 0 FROM p RETURNING 1),
ent AS (INSERT INTO ledger_entries (transfer_id, kind, account_id, currency, amount_minor, created_at_us)
        SELECT 'p' || id, 'payment', 'a' || payer, 'EUR', -amt, 0 FROM p
        UNION ALL SELECT 'p' || id, 'payment', 'a' || payee, 'EUR', amt, 0 FROM p RETURNING 1),
upd AS (UPDATE accounts SET balance_minor = balance_minor + d.delta
        FROM (SELECT acct, sum(delta) AS delta FROM (SELECT 'a' || payer AS acct, -amt AS delta FROM p
              UNION ALL SELECT 'a' || payee, amt FROM p) x GROUP BY acct) d
        WHERE accounts.account_id = d.acct RETURNING 1)
SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM pay), (SELECT count(*) FROM ent), (SELECT count(*) FROM upd);
END;
