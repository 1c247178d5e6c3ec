<?php
// A notification forwarded by a Herald source: already verified against the provider's
// keys, deduplicated by the provider's notify id, and delivered one at a time per order.
// This handler checks Herald's Standard Webhooks signature, then the amount against its
// own order, and applies it. Any 2xx acknowledges; anything else makes Herald retry.
declare(strict_types=1);
require __DIR__ . '/lib.php';

function reply(int $status, string $text): void
{
    http_response_code($status);
    header('Content-Type: text/plain');
    echo $text;
}

// Standard Webhooks: HMAC-SHA256 over "id.timestamp.body" with the base64-decoded secret
// (after "whsec_"); the header holds space-separated "v1,<base64>" signatures.
function verify_webhook(string $secret, string $id, string $ts, string $sigs, string $body): bool
{
    if (!ctype_digit($ts) || abs(time() - (int) $ts) > 300) {
        return false; // outside the 5-minute tolerance: a replay
    }
    $key = base64_decode(substr($secret, strlen('whsec_')), true);
    $expected = base64_encode(hash_hmac('sha256', "$id.$ts.$body", $key, true));
    foreach (explode(' ', $sigs) as $sig) {
        [$version, $value] = array_pad(explode(',', $sig, 2), 2, '');
        if ($version === 'v1' && hash_equals($expected, $value)) {
            return true;
        }
    }
    return false;
}

$body = file_get_contents('php://input');
$ok = verify_webhook(
    config('HERALD_SOURCE_SECRET'),
    $_SERVER['HTTP_WEBHOOK_ID'] ?? '',
    $_SERVER['HTTP_WEBHOOK_TIMESTAMP'] ?? '',
    $_SERVER['HTTP_WEBHOOK_SIGNATURE'] ?? '',
    $body
);
$db = db();
if (!$ok) {
    refuse($db, 'gateway', 'bad webhook signature');
    reply(401, 'bad signature');
    exit;
}

$n = json_decode($body, true);
if (!is_array($n) || !is_string($n['out_trade_no'] ?? null)) {
    refuse($db, 'gateway', 'no out_trade_no');
    reply(422, 'no out_trade_no');
    exit;
}
// The gateway verified the provider's signature; the amount is the shop's own check (a
// correctly signed notification can still name another amount). Payments carry the paid
// total in minor units; refunds carry provider-specific amounts, so only payments are
// compared.
$kind = $n['kind'] ?? '';
$amount = $kind === 'payment' ? (is_int($n['amount'] ?? null) ? $n['amount'] : -1) : null;
if (!in_array($kind, ['payment', 'refund', 'closed'], true)) {
    reply(200, 'ignored'); // an event the shop does not act on
    exit;
}
$why = apply_notification(
    $db,
    $n['out_trade_no'],
    $kind,
    $amount,
    (string) ($n['notify_id'] ?? ''),
    is_string($n['transaction_id'] ?? null) ? $n['transaction_id'] : null
);
if ($why !== null) {
    refuse($db, 'gateway', $why);
    // 2xx: a notification that can never apply is acknowledged (retrying cannot help, and
    // it would hold up the order's later notifications); it is recorded in `refused`.
    reply(200, 'refused');
    exit;
}
reply(200, 'ok');
