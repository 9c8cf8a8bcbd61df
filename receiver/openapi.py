"""The OpenAPI 3.1 description of the receiver (receiver/app.py), hand-written."""

from __future__ import annotations

from typing import Any

from mailapi.payload import MAX_LINK, MAX_SUBJECT, MAX_TOKEN
from mailapi.rendering import MESSAGE_TYPES

WEBHOOK_PATH = "/webhook/outbound-email"
# The payload fields an error's `field` can name, in the contract's order.
FIELDS = ("type", "to", "subject", "token", "expiresAt", "link", "fromLocalPart")
_ERRORS = {
    "400": "The body is not valid JSON (UTF-8, no duplicate keys, no NaN or Infinity, an "
           "object at the top), the Content-Length is not a number, the client hung up "
           "before the body was complete, a field contains a control character or line "
           "break (also hidden in an RFC 2047 encoded word; `field` names it), or the "
           "message could not be composed safely.",
    "401": "`missing signature` or `invalid signature`: a signature is required and a "
           "header is missing, malformed, repeated, outside the accepted timestamp window, "
           "or does not match the raw body.",
    "403": "`forbidden`: the caller's address is not on the configured allowlist.",
    "413": "The body is larger than the receiver's limit (checked against Content-Length "
           "before reading, and while reading).",
    "422": "A field is missing, has the wrong type or is invalid (`field` names it): an "
           "unknown `type`, `to` not exactly one valid address, an empty or too long "
           "text, `expiresAt` not an ISO 8601 timestamp or in the past, `link` not an "
           "absolute http(s) URL, or a `fromLocalPart` the sender policy does not allow.",
    "429": "`rate limit exceeded` for this caller's address; retry after Retry-After "
           "seconds.",
    "503": "The receiver cannot accept mail now, nothing was stored: `webhook secret not "
           "configured` or `sender domain not configured` (an administrator must act), the "
           "database is busy or unavailable, or the message template fails to render "
           "(both with Retry-After).",
}
_WITH_RETRY_AFTER = {"429": True, "503": False}  # status -> whether it always carries one


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(status: str) -> dict[str, Any]:
    response = _json(_ref("Error"), _ERRORS[status])
    if status in _WITH_RETRY_AFTER:
        response["headers"] = {"Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": _WITH_RETRY_AFTER[status],
            "schema": {"type": "integer", "minimum": 1}}}
    return response


def _signature_header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema,
            "description": description + " Required when the receiver requires signatures "
                                         "(the default); sent at most once."}


def _schemas() -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    return {
        "OutboundEmail": {
            "type": "object",
            "required": ["type", "to", "subject", "token", "expiresAt"],
            "properties": {
                "type": {"enum": list(MESSAGE_TYPES), "description": "The kind of message."},
                "to": {**text, "maxLength": 320, "format": "email",
                       "description": "Exactly one recipient address, without a display "
                                      "name (IDN domains are sent in punycode)."},
                "subject": {**text, "maxLength": MAX_SUBJECT,
                            "description": "The subject line; no control characters."},
                "token": {**text, "maxLength": MAX_TOKEN,
                          "description": "The raw one-time token."},
                "expiresAt": {**text, "maxLength": 40, "format": "date-time",
                              "description": "ISO 8601 timestamp in the future (UTC when "
                                             "it names no offset); never sent after it."},
                "link": {"type": "string", "maxLength": MAX_LINK, "format": "uri",
                         "description": "Optional absolute http:// or https:// URL."},
                "fromLocalPart": {"type": "string", "maxLength": 64,
                                  "description": "Optional sender local part, honoured "
                                                 "only when the sender policy allows it."},
            },
        },
        "Accepted": {
            "type": "object", "additionalProperties": False,
            "required": ["ok", "to", "subject", "queued_id", "queued_at"],
            "properties": {
                "ok": {"const": True},
                "to": {"type": "string", "description": "The recipient as it will be sent."},
                "subject": {"type": "string"},
                "queued_id": {"type": "integer", "minimum": 1,
                              "description": "The queue row; a retried identical request "
                                             "answers the same id."},
                "queued_at": {"type": "string", "format": "date-time"},
            },
        },
        "Error": {
            "type": "object", "additionalProperties": False, "required": ["ok", "error"],
            "properties": {
                "ok": {"const": False},
                "error": {"type": "string", "minLength": 1},
                "field": {"enum": list(FIELDS),
                          "description": "The payload field at fault, when there is one."},
            },
        },
        "Health": {
            "type": "object", "additionalProperties": False, "required": ["ok", "database"],
            "properties": {"ok": {"type": "boolean"}, "database": {"type": "string"}},
        },
    }


def _paths() -> dict[str, Any]:
    webhook = {
        "summary": "Queue an e-mail for delivery",
        "description": "Checks in order: caller address (403), rate limit (429), body size "
                       "(413), signature (503 without a secret, then 401), sender domain "
                       "(503), JSON and fields (400/422); then one durable commit (202). A "
                       "2xx means the message is stored and will be delivered or kept "
                       "visibly as failed.",
        "parameters": [
            _signature_header("X-TransLife-Timestamp", {"type": "string", "maxLength": 40},
                              "ISO 8601 time of signing, e.g. 2026-02-21T05:35:10Z."),
            _signature_header("X-TransLife-Signature",
                              {"type": "string", "pattern": "^[0-9A-Fa-f]{64}$"},
                              "hex(hmac_sha256(secret, timestamp + \".\" + raw body))."),
        ],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("OutboundEmail")}}},
        "responses": {
            "202": _json(_ref("Accepted"), "Stored durably and queued for delivery."),
            **{status: _error(status) for status in sorted(_ERRORS)},
        },
    }
    health = {
        "summary": "Liveness and database reachability",
        "responses": {
            "200": _json(_ref("Health"), "The database answers."),
            "503": {**_json(_ref("Health"), "The database is unavailable."),
                    "headers": {"Retry-After": {"required": True,
                                                "schema": {"type": "integer", "minimum": 1}}}},
        },
    }
    return {
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")}}},
        WEBHOOK_PATH: {"post": webhook},
        "/healthz": {"get": health},
    }


def document() -> dict[str, Any]:
    """The whole document, built afresh (callers may change their copy)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MAIL_API webhook receiver",
            "version": "1",
            "description": "The auth service posts outbound e-mail here. Sign each request "
                           "with X-TransLife-Timestamp and X-TransLife-Signature over the "
                           "exact bytes sent. Every answer is JSON with `ok`.",
        },
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    }
