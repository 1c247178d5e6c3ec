<?php
// Creates an order: POST out_trade_no, amount (minor units) and optionally subject and
// currency as a form; answers the order as JSON. (A real shop takes the amount from its
// catalog, never from the browser.)
declare(strict_types=1);
require __DIR__ . '/lib.php';

header('Content-Type: application/json');
if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    http_response_code(405);
    echo json_encode(['error' => 'POST out_trade_no and amount']);
    exit;
}
$no = $_POST['out_trade_no'] ?? '';
$amount = $_POST['amount'] ?? '';
if (!preg_match('/^[A-Za-z0-9_-]{1,64}$/', $no) || !ctype_digit($amount) || (int) $amount <= 0) {
    http_response_code(422);
    echo json_encode(['error' => 'out_trade_no is 1-64 of [A-Za-z0-9_-], amount a positive integer']);
    exit;
}
$db = db();
$stmt = $db->prepare(
    'INSERT INTO orders (out_trade_no, amount, currency, subject) VALUES (:o, :a, :c, :s)
     ON CONFLICT (out_trade_no) DO NOTHING'
);
$stmt->bindValue(':o', $no);
$stmt->bindValue(':a', (int) $amount, SQLITE3_INTEGER);
$stmt->bindValue(':c', $_POST['currency'] ?? 'CNY');
$stmt->bindValue(':s', $_POST['subject'] ?? '');
$stmt->execute();
$row = $db->querySingle(
    "SELECT out_trade_no, amount, currency, status FROM orders WHERE out_trade_no = '"
        . SQLite3::escapeString($no) . "'",
    true
);
http_response_code($db->changes() > 0 ? 201 : 200);
echo json_encode($row);
