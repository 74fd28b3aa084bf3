-- Per-account listings read the ledger (issue 15). Every payment already writes one ledger
-- entry for its payer and one for its payee, so an index of the entries by account, kind and
-- time lists an account's payments in the order ListPayments pages them (creation time, then
-- payment id: a payment's entries carry its id and its creation time). That index replaces
-- payments_by_payer and payments_by_payee, and the ledger's (account_id, entry_id) index,
-- which no query read: two index entries per payment instead of four. An account's entries
-- sort together, apart from other accounts', so each entry lands on a page of its own
-- account's range; SQLite logs each such page whole to its WAL at every commit that touches
-- it (docs/BENCHMARKS.md, "Payments").
DROP INDEX payments_by_payer;
DROP INDEX payments_by_payee;
DROP INDEX ledger_entries_by_account;
CREATE INDEX ledger_entries_by_account
    ON ledger_entries (account_id, kind, created_at_us, transfer_id);
