-- The PHP shop's database (SQLite). Amounts are integers in minor units (fen, cents):
-- never floats.
CREATE TABLE IF NOT EXISTS orders (
    out_trade_no TEXT PRIMARY KEY,
    amount       INTEGER NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL DEFAULT 'CNY',
    subject      TEXT NOT NULL DEFAULT '',
    -- Moves forward only: pending -> paid -> refunded, or pending -> closed.
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'paid', 'refunded', 'closed')),
    trade_no     TEXT,
    created_at   TEXT NOT NULL DEFAULT (datetime('now')),
    paid_at      TEXT
);

-- What the shop did because of a notification: 'ship' once per paid order, 'refund' once
-- per refunded order. Deliberately no UNIQUE constraint: the handlers' locked state check
-- is what keeps this at one per order (the tests count the rows).
CREATE TABLE IF NOT EXISTS fulfilments (
    id           INTEGER PRIMARY KEY,
    out_trade_no TEXT NOT NULL REFERENCES orders(out_trade_no),
    action       TEXT NOT NULL,
    notify_id    TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (datetime('now'))
);

-- Every notification the handlers refused, and why (for the operator).
CREATE TABLE IF NOT EXISTS refused (
    id         INTEGER PRIMARY KEY,
    handler    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (datetime('now'))
);
