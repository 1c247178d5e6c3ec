<?php
// Shared by the shop's pages: configuration (environment variables), the database, and
// the order state machine both notify handlers apply.
//
//   SHOP_DB                 the SQLite file (created from schema.sql on first use)
//   ALIPAY_APP_ID           notify-direct.php: the shop's Alipay app id
//   ALIPAY_PUBLIC_KEY_FILE  notify-direct.php: Alipay's public key (PEM)
//   HERALD_SOURCE_SECRET    notify-gateway.php: the source's whsec_ secret

declare(strict_types=1);

function config(string $name): string
{
    $v = getenv($name);
    if ($v === false || $v === '') {
        throw new RuntimeException("$name is not set");
    }
    return $v;
}

function db(): SQLite3
{
    $db = new SQLite3(config('SHOP_DB'));
    $db->enableExceptions(true);
    // Concurrent notify requests wait for each other's transaction instead of failing.
    $db->busyTimeout(10000);
    $db->exec('PRAGMA journal_mode = WAL');
    $db->exec('PRAGMA foreign_keys = ON');
    $db->exec(file_get_contents(__DIR__ . '/schema.sql'));
    return $db;
}

// "88.00" -> 8800, with string arithmetic only (a float would round 0.1 + 0.2). Null when
// the text is not a plain amount with at most two decimals.
function to_minor(string $decimal): ?int
{
    if (!preg_match('/^(0|[1-9][0-9]{0,12})(?:\.([0-9]{1,2}))?$/', $decimal, $m)) {
        return null;
    }
    return intval($m[1]) * 100 + intval(str_pad($m[2] ?? '', 2, '0'));
}

function refuse(SQLite3 $db, string $handler, string $reason): void
{
    $stmt = $db->prepare('INSERT INTO refused (handler, reason) VALUES (:h, :r)');
    $stmt->bindValue(':h', $handler);
    $stmt->bindValue(':r', $reason);
    $stmt->execute();
}

// Applies one verified notification to its order, inside one transaction that takes the
// database's write lock first (BEGIN IMMEDIATE: SQLite's "SELECT ... FOR UPDATE"), so two
// copies arriving at once are applied one after the other and the second sees the first's
// result. $kind is 'payment', 'refund' or 'closed'; $amount (minor units) is checked
// against the order for payments (and for anything carrying the order's total), null
// when the notification carries no total. Returns null when applied (or already applied),
// else why it was refused.
function apply_notification(
    SQLite3 $db,
    string $out_trade_no,
    string $kind,
    ?int $amount,
    string $notify_id,
    ?string $trade_no
): ?string {
    $db->exec('BEGIN IMMEDIATE');
    try {
        $stmt = $db->prepare('SELECT amount, status FROM orders WHERE out_trade_no = :o');
        $stmt->bindValue(':o', $out_trade_no);
        $order = $stmt->execute()->fetchArray(SQLITE3_ASSOC);
        if ($order === false) {
            $db->exec('ROLLBACK');
            return "unknown order $out_trade_no";
        }
        if ($amount !== null && $amount !== (int) $order['amount']) {
            $db->exec('ROLLBACK');
            return "amount $amount does not match order $out_trade_no ({$order['amount']})";
        }
        $status = $order['status'];
        $fulfil = function (string $action) use ($db, $out_trade_no, $notify_id): void {
            $f = $db->prepare(
                'INSERT INTO fulfilments (out_trade_no, action, notify_id) VALUES (:o, :a, :n)'
            );
            $f->bindValue(':o', $out_trade_no);
            $f->bindValue(':a', $action);
            $f->bindValue(':n', $notify_id);
            $f->execute();
        };
        $move = function (string $to) use ($db, $out_trade_no, $trade_no): void {
            $u = $db->prepare(
                "UPDATE orders SET status = :s, trade_no = COALESCE(trade_no, :t),
                        paid_at = CASE WHEN :s = 'paid' THEN datetime('now') ELSE paid_at END
                 WHERE out_trade_no = :o"
            );
            $u->bindValue(':s', $to);
            $u->bindValue(':t', $trade_no);
            $u->bindValue(':o', $out_trade_no);
            $u->execute();
        };
        // Forward only. A refund can arrive before its payment's notification (providers
        // retry independently): it proves the payment, so the order is paid (and shipped)
        // first; the late payment notification then changes nothing.
        if (($kind === 'payment' || $kind === 'refund') && $status === 'pending') {
            $move('paid');
            $fulfil('ship');
            $status = 'paid';
        }
        if ($kind === 'refund' && $status === 'paid') {
            $move('refunded');
            $fulfil('refund');
        }
        if ($kind === 'closed' && $status === 'pending') {
            $move('closed');
        }
        $db->exec('COMMIT');
        return null;
    } catch (Throwable $e) {
        $db->exec('ROLLBACK');
        throw $e;
    }
}
