#!/usr/bin/env python3
"""Generates the Alipay mainland (alipay.trade.*) signature vectors with the official SDK.

The oracle is the official `alipay-sdk-python` 3.7.1411 (PyPI): `get_sign_content`,
`sign_with_rsa2` and `verify_with_rsa` from `alipay.aop.api.util.SignatureUtils`, and the
client's own response extraction (`DefaultAlipayClient.__parse_response`). It installs into a
top-level package named `alipay` and reads PKCS#1 keys only, so give it its own venv:

    python3 -m venv /tmp/alipay-sdk-venv
    /tmp/alipay-sdk-venv/bin/pip install alipay-sdk-python==3.7.1411
    /tmp/alipay-sdk-venv/bin/python tests/vectors/alipay_cn/generate.py > tests/vectors/alipay_cn/vectors.json

The test suite reads only the JSON it wrote; it never needs the SDK. RSA PKCS#1 v1.5 is
deterministic, so a rerun writes the same file.
"""

import json
import os
import sys

from Crypto.PublicKey import RSA  # pycryptodome, a dependency of the SDK
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.constant.CommonConstants import THREAD_LOCAL
from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa2, verify_with_rsa

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "..", "keys")


def pem_body(pem):
    """The bare Base64 between the PEM markers, on one line (what the SDK takes)."""
    return "".join(l.strip() for l in pem.strip().splitlines() if not l.startswith("-----"))


def read(name):
    with open(os.path.join(KEYS, name)) as f:
        return f.read()


merchant_pkcs1 = pem_body(read("merchant_private_pkcs1.pem"))
merchant_public = pem_body(read("merchant_public.pem"))
# The SDK cannot read the PKCS#8 gateway key; pycryptodome converts it to PKCS#1.
gateway_pkcs1 = pem_body(RSA.import_key(read("gateway_private_pkcs8.pem")).export_key(pkcs=1).decode())
gateway_public = pem_body(read("gateway_public.pem"))

COMMON = {
    "app_id": "2021000000000001",
    "format": "JSON",
    "charset": "utf-8",
    "sign_type": "RSA2",
    "timestamp": "2026-01-02 11:04:05",
    "version": "1.0",
}


def biz(d):
    # The form posd sends: compact JSON, UTF-8 left as is.
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


REQUESTS = [
    ("pay", "alipay.trade.pay", {"notify_url": "https://pos.example.com/alipay/notify"}, {
        "out_trade_no": "T1_0001_pos_20260102",
        "scene": "bar_code",
        "auth_code": "281234567890123456",
        "total_amount": "12.34",
        "subject": "收银台 购物 (Store 7)",
        "product_code": "FACE_TO_FACE_PAYMENT",
        "store_id": "S7",
        "terminal_id": "T1",
        "timeout_express": "3m",
    }),
    ("pay_isv", "alipay.trade.pay", {"app_auth_token": "202601BBd5e0c6a9f3c1486c95b5d4e1f0a2X08"}, {
        "out_trade_no": "T1_0002",
        "scene": "bar_code",
        "auth_code": "251234567890123400",
        "total_amount": "0.01",
        "subject": "Coffee",
        "product_code": "FACE_TO_FACE_PAYMENT",
    }),
    ("query", "alipay.trade.query", {}, {"out_trade_no": "T1_0001_pos_20260102"}),
    ("cancel", "alipay.trade.cancel", {}, {"out_trade_no": "T1_0001_pos_20260102"}),
    ("refund", "alipay.trade.refund", {}, {
        "out_trade_no": "T1_0001_pos_20260102",
        "refund_amount": "5.00",
        "out_request_no": "R_T1_0001_1",
        "refund_reason": "退货",
    }),
    ("refund_query", "alipay.trade.fastpay.refund.query", {}, {
        "out_trade_no": "T1_0001_pos_20260102",
        "out_request_no": "R_T1_0001_1",
    }),
]

out = {
    "generated_with": "alipay-sdk-python 3.7.1411: SignatureUtils.get_sign_content, "
    "sign_with_rsa2, verify_with_rsa; DefaultAlipayClient.__parse_response for answers",
    "keys": {
        "merchant_private_pkcs1": "merchant_private_pkcs1.pem",
        "merchant_private_pkcs8": "merchant_private_pkcs8.pem",
        "merchant_public": "merchant_public.pem",
        "gateway_private_pkcs8": "gateway_private_pkcs8.pem",
        "gateway_public": "gateway_public.pem",
    },
    "requests": [],
    "responses": [],
    "notifications": [],
}

for name, method, extra, content in REQUESTS:
    params = dict(COMMON, method=method, **extra)
    params["biz_content"] = biz(content)
    sign_content = get_sign_content(params)
    sign = sign_with_rsa2(merchant_pkcs1, sign_content, "utf-8")
    assert verify_with_rsa(merchant_public, sign_content.encode("utf-8"), sign)
    out["requests"].append({"name": name, "params": params, "sign_content": sign_content, "sign": sign})

# Answers: the gateway signs the raw text of the `…_response` object. Some carry `}` and `\/`
# inside strings, which a brace counter or a re-serialization gets wrong.
RESPONSES = [
    ("pay_success", "alipay_trade_pay_response",
     '{"code":"10000","msg":"Success","buyer_logon_id":"159****5620","buyer_pay_amount":"12.34",'
     '"gmt_payment":"2026-01-02 11:04:07","invoice_amount":"12.34","out_trade_no":"T1_0001_pos_20260102",'
     '"point_amount":"0.00","receipt_amount":"12.34","total_amount":"12.34","trade_no":"2026010222001400001234567890"}'),
    ("pay_braces_and_slashes", "alipay_trade_pay_response",
     '{"code":"10000","msg":"Success","out_trade_no":"T1_0003","total_amount":"1.00",'
     '"trade_no":"2026010222001400001234567891","store_name":"Shop }{ \\"7\\" a\\/b",'
     '"fund_bill_list":[{"amount":"1.00","fund_channel":"ALIPAYACCOUNT"}],"buyer_logon_id":"a\\/b}c"}'),
    ("pay_waiting", "alipay_trade_pay_response",
     '{"code":"10003","msg":" order success pay inprocess","out_trade_no":"T1_0004","total_amount":"88.00",'
     '"trade_no":"2026010222001400001234567892"}'),
    ("pay_failed", "alipay_trade_pay_response",
     '{"code":"40004","msg":"Business Failed","sub_code":"ACQ.PAYMENT_AUTH_CODE_INVALID",'
     '"sub_msg":"支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款"}'),
    ("query_success", "alipay_trade_query_response",
     '{"code":"10000","msg":"Success","buyer_logon_id":"159****5620","buyer_pay_amount":"12.34",'
     '"out_trade_no":"T1_0001_pos_20260102","send_pay_date":"2026-01-02 11:04:07","total_amount":"12.34",'
     '"trade_no":"2026010222001400001234567890","trade_status":"TRADE_SUCCESS"}'),
    ("cancel_refund", "alipay_trade_cancel_response",
     '{"code":"10000","msg":"Success","action":"refund","out_trade_no":"T1_0001_pos_20260102",'
     '"retry_flag":"N","trade_no":"2026010222001400001234567890"}'),
]

config = AlipayClientConfig()
config.app_id = COMMON["app_id"]
config.app_private_key = merchant_pkcs1
config.alipay_public_key = gateway_public
client = DefaultAlipayClient(config)
parse = client._DefaultAlipayClient__parse_response
# The parser logs through a per-thread logger the client sets up per call; none here.
THREAD_LOCAL.logger = None
THREAD_LOCAL.uuid = "vectors"

for name, key, obj in RESPONSES:
    sign = sign_with_rsa2(gateway_pkcs1, obj, "utf-8")
    body = '{"' + key + '":' + obj + ',"sign":"' + sign + '"}'
    # The SDK's own extraction and verification must accept it and find exactly `obj`.
    assert parse(body.encode("utf-8")) == obj, name
    out["responses"].append({"name": name, "body": body, "signed_content": obj, "sign": sign})

# A notification: form fields, signed over the sorted fields without sign and sign_type.
notify = {
    "notify_time": "2026-01-02 11:04:08",
    "notify_type": "trade_status_sync",
    "notify_id": "2026010200222110408000000000000001",
    "app_id": COMMON["app_id"],
    "charset": "utf-8",
    "version": "1.0",
    "trade_no": "2026010222001400001234567890",
    "out_trade_no": "T1_0001_pos_20260102",
    "trade_status": "TRADE_SUCCESS",
    "total_amount": "12.34",
    "receipt_amount": "12.34",
    "buyer_logon_id": "159****5620",
    "subject": "收银台 购物 (Store 7)",
    "gmt_create": "2026-01-02 11:04:06",
    "gmt_payment": "2026-01-02 11:04:07",
}
content = get_sign_content(notify)
sign = sign_with_rsa2(gateway_pkcs1, content, "utf-8")
assert verify_with_rsa(gateway_public, content.encode("utf-8"), sign)
fields = dict(notify, sign=sign, sign_type="RSA2")
out["notifications"].append({"name": "trade_success", "fields": fields, "sign_content": content})

json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
sys.stdout.write("\n")
