"""Checks one captured notification with the provider's own Python SDK.

Reads a JSON object on standard input: {"profile", "headers": {name: value}, "body_b64",
"keys": {...}} and exits 0 when the SDK accepts the notification (printing what it decoded
as JSON), 1 when it rejects it, 2 on a usage error. Herald's interop tests run it.
"""
import base64
import json
import sys
from urllib.parse import parse_qsl


def alipay(headers, body, keys):
    from alipay import AliPay
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # The SDK insists on an app private key although verifying needs only the public key.
    app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app_pem = app_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    client = AliPay(
        appid=keys["app_id"],
        app_notify_url=None,
        app_private_key_string=app_pem,
        alipay_public_key_string=keys["public_key_pem"],
        sign_type="RSA2",
    )
    data = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    signature = data.pop("sign", "")
    if not client.verify(dict(data), signature):
        return None
    return data


def wechatpay_v2(headers, body, keys):
    from wechatpy.exceptions import InvalidSignatureException
    from wechatpy.pay import WeChatPay

    client = WeChatPay(appid=keys["appid"], api_key=keys["api_key"], mch_id=keys["mch_id"])
    if b"<req_info>" in body:
        # A refund notification: not signed; wechatpy decrypts req_info with the API key.
        try:
            return dict(client.parse_refund_notify_result(body))
        except Exception:  # wrong key or altered ciphertext: padding, UTF-8 or XML fails
            return None
    try:
        return client.parse_payment_result(body)
    except InvalidSignatureException:
        return None


def wechatpay_v3(headers, body, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from wechatpayv3.core import Core

    merchant_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    merchant_pem = merchant_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    core = Core(
        mchid=keys["mchid"],
        cert_serial_no="0" * 40,
        private_key=merchant_pem,
        apiv3_key=keys["api_v3_key"],
        public_key=keys["public_key_pem"],
        public_key_id=keys["serial"],
    )
    return core.callback(headers, body)


def stripe_(headers, body, keys):
    import stripe

    header = {k.lower(): v for k, v in headers.items()}.get("stripe-signature", "")
    try:
        event = stripe.Webhook.construct_event(body.decode("utf-8"), header, keys["secret"], tolerance=300)
    except (stripe.error.SignatureVerificationError, ValueError):
        return None
    return {"id": event["id"], "type": event["type"]}


def standard_webhooks(headers, body, keys):
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        return Webhook(keys["secret"]).verify(body, headers)
    except WebhookVerificationError:
        return None


CHECKERS = {
    "alipay": alipay,
    "wechatpay-v2": wechatpay_v2,
    "wechatpay-v3": wechatpay_v3,
    "stripe": stripe_,
    "standard-webhooks": standard_webhooks,
}


def main():
    req = json.load(sys.stdin)
    checker = CHECKERS.get(req.get("profile"))
    if checker is None:
        print("unknown profile", file=sys.stderr)
        return 2
    body = base64.b64decode(req["body_b64"])
    result = checker(req["headers"], body, req["keys"])
    if not result:
        print("rejected")
        return 1
    print(json.dumps(result, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
