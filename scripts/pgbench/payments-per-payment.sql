-- One payment per transaction, statement by statement, as the payments store runs it on
-- PostgreSQL today (services/payments/src/store/ledger.rs): look up and claim the idempotency
-- key, lock both accounts in id order, update both balances, insert the payment and its two
-- ledger entries, commit. Ten round trips. Used by scripts/bench-payments.sh.
\set a random(0, 99)
\set d random(1, 99)
\set amt random(1, 100)
\set r random(1, 9000000000000)
\set b (:a + :d) % 100
\set lo least(:a, :b)
\set hi greatest(:a, :b)
BEGIN;
SELECT fingerprint, resource_id FROM idempotency_keys WHERE scope = 'payment' AND idempotency_key = 'k' || :r;
INSERT INTO idempotency_keys VALUES ('payment', 'k' || :r, 'fp', 'p' || :r, 0) ON CONFLICT DO NOTHING;
SELECT account_id, currency, balance_minor FROM accounts WHERE account_id = 'a' || :lo FOR UPDATE;
SELECT account_id, currency, balance_minor FROM accounts WHERE account_id = 'a' || :hi FOR UPDATE;
UPDATE accounts SET balance_minor = balance_minor - :amt WHERE account_id = 'a' || :a;
UPDATE accounts SET balance_minor = balance_minor + :amt WHERE account_id = 'a' || :b;
INSERT INTO payments VALUES ('p' || :r, 'k' || :r, 'a' || :a, 'a' || :b, :amt, 'EUR', 'bench', '{}', 0, 0);
INSERT INTO ledger_entries (transfer_id, kind, account_id, currency, amount_minor, created_at_us) VALUES ('p' || :r, 'payment', 'a' || :a, 'EUR', 0 - :amt::bigint, 0), ('p' || :r, 'payment', 'a' || :b, 'EUR', :amt::bigint, 0);
END;
