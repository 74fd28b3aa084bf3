-- The payments ledger (SQLite). The same tables and invariants as migrations/postgres, as
-- STRICT tables so a column never silently holds another type (an INTEGER overflowing into a
-- REAL, for one). Amounts are INTEGER minor units; timestamps are INTEGER microseconds since
-- the Unix epoch.

-- One balance per account, in one currency. The CHECK is the last line of defence: the
-- store refuses overdrafts before it writes, inside the same transaction.
CREATE TABLE accounts (
    account_id    TEXT    PRIMARY KEY CHECK (account_id <> ''),
    currency      TEXT    NOT NULL CHECK (currency GLOB '[A-Z][A-Z][A-Z]'),
    balance_minor INTEGER NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
    created_at_us INTEGER NOT NULL
) STRICT;

-- Money moved from a payer to a payee. Everything but refunded_minor is immutable.
CREATE TABLE payments (
    payment_id       TEXT    PRIMARY KEY,
    idempotency_key  TEXT    NOT NULL,
    payer_account_id TEXT    NOT NULL REFERENCES accounts (account_id),
    payee_account_id TEXT    NOT NULL REFERENCES accounts (account_id),
    amount_minor     INTEGER NOT NULL CHECK (amount_minor > 0),
    currency         TEXT    NOT NULL CHECK (currency GLOB '[A-Z][A-Z][A-Z]'),
    description      TEXT    NOT NULL,
    metadata         TEXT    NOT NULL, -- JSON object with sorted keys
    refunded_minor   INTEGER NOT NULL DEFAULT 0
        CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    created_at_us    INTEGER NOT NULL
) STRICT;
CREATE INDEX payments_by_payer ON payments (payer_account_id, created_at_us, payment_id);
CREATE INDEX payments_by_payee ON payments (payee_account_id, created_at_us, payment_id);

-- Money entering from outside; balance_after_minor makes a replay return the original answer.
CREATE TABLE deposits (
    deposit_id          TEXT    PRIMARY KEY,
    account_id          TEXT    NOT NULL REFERENCES accounts (account_id),
    amount_minor        INTEGER NOT NULL CHECK (amount_minor > 0),
    balance_after_minor INTEGER NOT NULL CHECK (balance_after_minor >= amount_minor),
    created_at_us       INTEGER NOT NULL
) STRICT;

-- Money returned from payee to payer; refunded_after_minor is the payment's total refunded
-- right after this refund, for replays.
CREATE TABLE refunds (
    refund_id            TEXT    PRIMARY KEY,
    payment_id           TEXT    NOT NULL REFERENCES payments (payment_id),
    amount_minor         INTEGER NOT NULL CHECK (amount_minor > 0),
    refunded_after_minor INTEGER NOT NULL CHECK (refunded_after_minor >= amount_minor),
    created_at_us        INTEGER NOT NULL
) STRICT;
CREATE INDEX refunds_by_payment ON refunds (payment_id);

-- Double entry: every deposit, payment and refund writes entries summing to zero, in the
-- transaction that changes the balances. amount_minor > 0 credits the account, < 0 debits it.
-- account_id NULL is the world outside: the counter-entry of a deposit. So for every account,
-- SUM(amount_minor) = balance_minor, and for every transfer_id, SUM(amount_minor) = 0.
CREATE TABLE ledger_entries (
    entry_id      INTEGER PRIMARY KEY,
    transfer_id   TEXT    NOT NULL, -- deposit_id, payment_id or refund_id
    kind          TEXT    NOT NULL CHECK (kind IN ('deposit', 'payment', 'refund')),
    account_id    TEXT    REFERENCES accounts (account_id),
    currency      TEXT    NOT NULL CHECK (currency GLOB '[A-Z][A-Z][A-Z]'),
    amount_minor  INTEGER NOT NULL CHECK (amount_minor <> 0),
    created_at_us INTEGER NOT NULL
) STRICT;
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, entry_id);
CREATE INDEX ledger_entries_by_transfer ON ledger_entries (transfer_id);

-- Idempotency keys, per operation. Written in the transaction that moves the money, so a key
-- exists exactly when its operation took effect; the primary key makes concurrent requests
-- with one key execute once, across processes.
CREATE TABLE idempotency_keys (
    scope           TEXT    NOT NULL CHECK (scope IN ('deposit', 'payment', 'refund')),
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL, -- SHA-256 of the canonical request parameters, hex
    resource_id     TEXT    NOT NULL, -- the deposit, payment or refund it produced
    created_at_us   INTEGER NOT NULL,
    PRIMARY KEY (scope, idempotency_key)
) STRICT;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_us);
