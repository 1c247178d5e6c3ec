"""Calls the payment sandbox's provider API with the provider's own Python SDK, as a merchant
would, with only the SDK's base URL changed.

Reads a JSON object on standard input: {"profile", "base" (the sandbox's URL), "keys": {...},
"op": "query" | "refund", "args": {...}} and prints {"ok": true, "result": ...} when the SDK
returned (having verified the response where it verifies them), or {"ok": false, "error":
...} when the SDK raised; exits 0 either way, 2 on a usage error. Herald's interop tests run
it.
"""
import json
import sys


def alipay(base, keys, op, args):
    from alipay import AliPay
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # The merchant's own key: the sandbox cannot check it (it holds no merchant public key).
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
    client._gateway = base + "/gateway.do"
    if op == "query":
        return client.api_alipay_trade_query(**args)
    if op == "refund":
        return client.api_alipay_trade_refund(**args)
    raise ValueError(op)


def wechatpay_v2(base, keys, op, args):
    from wechatpy.pay import WeChatPay

    client = WeChatPay(appid=keys["appid"], api_key=keys["api_key"], mch_id=keys["mch_id"])
    client.API_BASE_URL = base + "/"
    if op == "query":
        result = client.order.query(**args)
    elif op == "refund":
        result = client.refund.apply(**args)
    else:
        raise ValueError(op)
    # wechatpy returns the answer without checking its sign: check it as a merchant should.
    if not client.check_signature(dict(result)):
        raise ValueError("the answer's sign does not verify")
    return result


def wechatpay_v3(base, keys, op, args):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from wechatpayv3 import WeChatPay, WeChatPayType

    merchant_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    merchant_pem = merchant_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    client = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=keys["mchid"],
        private_key=merchant_pem,
        cert_serial_no="0" * 40,
        appid=keys["appid"],
        apiv3_key=keys["api_v3_key"],
        public_key=keys["public_key_pem"],
        public_key_id=keys["serial"],
    )
    client._core._gate_way = base
    if op == "query":
        code, text = client.query(**args)
    elif op == "refund":
        code, text = client.refund(**args)
    else:
        raise ValueError(op)
    # The SDK raises when a 2xx answer's signature does not verify.
    return {"status": code, "body": json.loads(text) if isinstance(text, str) else text}


CLIENTS = {
    "alipay": alipay,
    "wechatpay-v2": wechatpay_v2,
    "wechatpay-v3": wechatpay_v3,
}


def main():
    req = json.load(sys.stdin)
    client = CLIENTS.get(req.get("profile"))
    if client is None:
        print("unknown profile", file=sys.stderr)
        return 2
    try:
        result = client(req["base"], req["keys"], req["op"], req.get("args", {}))
        out = {"ok": True, "result": result}
    except Exception as e:  # the SDK's refusal, whatever its class
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
