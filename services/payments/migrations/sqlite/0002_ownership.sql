-- Ownership (issue 13): an account belongs to the caller that created it, and idempotency
-- keys belong to the caller that sent them.

-- The caller (token subject, else certificate principal) that created the account; NULL for
-- accounts created anonymously and for every account created before this migration. Only
-- the owner may move money out of an account or read it; NULL is owned by anonymous callers.
-- Never changes once set, so a check may read it anywhere in the transaction it guards.
ALTER TABLE accounts ADD COLUMN owner TEXT CHECK (owner <> '');

-- Keys are scoped per caller as well as per operation: one caller's key never replays, nor
-- blocks, another's. '' is the anonymous caller, whose keys are every key recorded before
-- this migration. SQLite cannot change a primary key, so the table is rebuilt.
CREATE TABLE idempotency_keys_by_caller (
    scope           TEXT    NOT NULL CHECK (scope IN ('deposit', 'payment', 'refund')),
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL, -- SHA-256 of the canonical request parameters, hex
    resource_id     TEXT    NOT NULL, -- the deposit, payment or refund it produced
    created_at_us   INTEGER NOT NULL,
    caller          TEXT    NOT NULL DEFAULT '', -- last, as ALTER TABLE puts it on PostgreSQL
    PRIMARY KEY (scope, caller, idempotency_key)
) STRICT;
INSERT INTO idempotency_keys_by_caller
    (scope, idempotency_key, fingerprint, resource_id, created_at_us, caller)
SELECT scope, idempotency_key, fingerprint, resource_id, created_at_us, ''
FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_by_caller RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_us);
