<?php
// Alipay's asynchronous notification, straight from Alipay (or Herald's sandbox, which
// sends what Alipay sends). Answers exactly "success" once the order is updated; anything
// else ("fail") makes Alipay send it again later.
declare(strict_types=1);
require __DIR__ . '/lib.php';

function answer(string $text): void
{
    header('Content-Type: text/plain');
    echo $text; // exactly "success": no newline, no BOM, nothing after the closing code
}

if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    http_response_code(405);
    exit;
}

// 1. The raw body, parsed by hand: $_POST would rename keys with dots or spaces and
//    decode by PHP's own rules. Values are URL-decoded ('+' is a space) for the check.
$raw = file_get_contents('php://input');
$params = [];
foreach (explode('&', $raw) as $pair) {
    if ($pair === '') {
        continue;
    }
    [$k, $v] = array_pad(explode('=', $pair, 2), 2, '');
    $params[urldecode($k)] = urldecode($v);
}
$db = db();

// 2. The signature: RSA2 (SHA256withRSA) over every parameter except sign and sign_type,
//    empty values left out, sorted by name, joined as k=v with '&'.
$sign = base64_decode($params['sign'] ?? '', true);
if ($sign === false || $sign === '' || ($params['sign_type'] ?? 'RSA2') !== 'RSA2') {
    refuse($db, 'direct', 'no RSA2 sign');
    answer('fail');
    exit;
}
$signed = $params;
unset($signed['sign'], $signed['sign_type']);
$signed = array_filter($signed, fn ($v) => $v !== '');
ksort($signed, SORT_STRING);
$content = implode('&', array_map(fn ($k, $v) => "$k=$v", array_keys($signed), $signed));
$key = openssl_pkey_get_public(file_get_contents(config('ALIPAY_PUBLIC_KEY_FILE')));
if ($key === false || openssl_verify($content, $sign, $key, OPENSSL_ALGO_SHA256) !== 1) {
    refuse($db, 'direct', 'bad signature');
    answer('fail');
    exit;
}

// 3. It is for this shop, and for an amount this order has.
if (($params['app_id'] ?? '') !== config('ALIPAY_APP_ID')) {
    refuse($db, 'direct', 'foreign app_id');
    answer('fail');
    exit;
}
$amount = to_minor($params['total_amount'] ?? '');
if ($amount === null) {
    refuse($db, 'direct', 'no total_amount');
    answer('fail');
    exit;
}

// 4. What happened: a refund carries refund_fee; TRADE_CLOSED without one is a close.
$status = $params['trade_status'] ?? '';
if (isset($params['refund_fee'])) {
    $kind = 'refund';
} elseif ($status === 'TRADE_SUCCESS' || $status === 'TRADE_FINISHED') {
    $kind = 'payment';
} elseif ($status === 'TRADE_CLOSED') {
    $kind = 'closed';
} else {
    answer('success'); // WAIT_BUYER_PAY: nothing to do
    exit;
}

// 5. Update the order in one transaction with the row locked; only then acknowledge.
$why = apply_notification(
    $db,
    $params['out_trade_no'] ?? '',
    $kind,
    $amount,
    $params['notify_id'] ?? '',
    $params['trade_no'] ?? null
);
if ($why !== null) {
    refuse($db, 'direct', $why);
    answer('fail');
    exit;
}
answer('success');
