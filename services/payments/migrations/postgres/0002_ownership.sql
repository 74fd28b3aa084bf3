-- Ownership (issue 13): an account belongs to the caller that created it, and idempotency
-- keys belong to the caller that sent them.

-- The caller (token subject, else certificate principal) that created the account; NULL for
-- accounts created anonymously and for every account created before this migration. Only
-- the owner may move money out of an account or read it; NULL is owned by anonymous callers.
-- Never changes once set, so a check may read it anywhere in the transaction it guards.
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE accounts ADD COLUMN owner TEXT CHECK (owner <> '');

-- Keys are scoped per caller as well as per operation: one caller's key never replays, nor
-- blocks, another's. '' is the anonymous caller, whose keys are every key recorded before
-- this migration (a constant default rewrites nothing either; the new primary key index is
-- built once).
ALTER TABLE idempotency_keys ADD COLUMN caller TEXT NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (scope, caller, idempotency_key);
