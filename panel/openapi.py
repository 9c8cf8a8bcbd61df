"""The OpenAPI 3.1 description of the admin API (panel/views/api.py), hand-written."""

from __future__ import annotations

import dataclasses
from typing import Any

from mailapi.settings import SECRET_KEYS, Settings, describe

MAX_ID = 2**63 - 1
_ERRORS = {
    "400": "The body is not valid JSON.",
    "401": "No API key, or one that is unknown, revoked or expired.",
    "403": "A read-only API key asked for a change, or a browser request came from "
           "another site.",
    "404": "No such message or admin.",
    "409": "The request conflicts with the current state (the message is not in a state "
           "that allows it, the admin exists, the last active admin).",
    "413": "The body is larger than 256 KB.",
    "415": "The body is not sent as application/json.",
    "422": "A value does not validate; `field` names it when it is one setting or "
           "parameter.",
    "503": "The database is busy or unavailable; nothing was changed.",
}
_SETTING_TYPES: dict[str, dict[str, Any]] = {
    "bool": {"type": "boolean"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "list[str]": {"type": "array", "items": {"type": "string"}},
}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(required: bool = True, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    return schema


def _ok(**properties: Any) -> dict[str, Any]:
    return _object(ok={"const": True}, **properties)


def _operation(summary: str, success: dict[str, Any], errors: str, *, tag: str,
               status: str = "200", admin: bool = False, parameters: list[Any] | None = None,
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    codes = ["401", *(["403"] if admin else []), *errors.split(), "503"]
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "description": "Needs an API key with admin scope." if admin else
                       "Any API key (read or admin scope).",
        "responses": {status: _json(success, "Success."),
                      **{code: _json(_ref("Error"), _ERRORS[code]) for code in sorted(codes)}},
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": body}}}
    return operation


def _id_parameter(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": f"The {what}'s id.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def settings_properties() -> dict[str, Any]:
    """Every runtime setting with its JSON type, from the settings definitions themselves."""
    properties: dict[str, Any] = {}
    for definition in dataclasses.fields(Settings):
        if definition.name == "revision":
            continue
        schema = dict(_SETTING_TYPES[str(definition.type)])
        schema["description"] = describe(definition.name)
        if definition.name in SECRET_KEYS:
            schema["description"] += (" (secret: read back as ******** when set, empty when "
                                      "not; sending ******** keeps the stored value)")
        properties[definition.name] = schema
    return properties


def _schemas() -> dict[str, Any]:
    settings = settings_properties()
    return {
        "Error": {"type": "object", "required": ["ok", "error"], "properties": {
            "ok": {"const": False}, "error": {"type": "string"}, "field": _STRING_OR_NULL}},
        "Message": _object(
            id={"type": "integer"}, state={"enum": ["queued", "leased", "failed"]},
            type={"type": "string"}, recipient={"type": "string"},
            subject={"type": "string"}, message_id={"type": "string"},
            created_at={"type": "number"}, expires_at={"type": "number"},
            next_attempt_at={"type": "number"}, attempts={"type": "integer"},
            reclaims={"type": "integer"}, last_error=_STRING_OR_NULL,
            failed_reason=_STRING_OR_NULL),
        "Attempt": _object(
            queue_id={"type": "integer"}, message_id={"type": "string"},
            recipient={"type": "string"},
            outcome={"enum": ["delivered", "deferred", "failed", "paused"]},
            smtp_code={"type": ["integer", "null"]}, detail=_STRING_OR_NULL,
            at={"type": "number"}),
        "Admin": _object(
            id={"type": "integer"}, username={"type": "string"}, disabled={"type": "boolean"},
            created_at={"type": "number"}, created_by={"type": "string"},
            password_changed_at={"type": "number"}, last_login_at=_NUMBER_OR_NULL),
        "Heartbeat": _object(
            process={"type": "string"}, alive={"type": "boolean"},
            pid={"type": ["integer", "null"]}, hostname=_STRING_OR_NULL,
            started_at=_NUMBER_OR_NULL, beat_at=_NUMBER_OR_NULL, status=_STRING_OR_NULL),
        "Settings": {"type": "object", "properties": settings, "required": list(settings),
                     "additionalProperties": False},
        "SettingsChange": {"type": "object", "properties": settings,
                           "additionalProperties": False},
        "SettingsAnswer": _ok(revision={"type": "integer"}, settings=_ref("Settings")),
        "MessageAnswer": _ok(message=_ref("Message"), detail={"type": "string"}),
        "AdminAnswer": _ok(admin=_ref("Admin")),
    }


def _paths() -> dict[str, Any]:
    counts = {"type": "object", "additionalProperties": {"type": "integer"}}
    queue_id, admin_id = _id_parameter("queue_id", "message"), _id_parameter("admin_id", "admin")
    message = _ok(message=_ref("Message"), attempts={"type": "array",
                                                     "items": _ref("Attempt")})
    listing = _ok(total={"type": "integer"}, limit={"type": "integer"},
                  offset={"type": "integer"},
                  messages={"type": "array", "items": _ref("Message")})
    status = _ok(queue=counts, oldest_waiting_since=_NUMBER_OR_NULL, last_hour=counts,
                 paused=_object(active={"type": "boolean"}, until=_NUMBER_OR_NULL,
                                reason=_STRING_OR_NULL),
                 heartbeats={"type": "array", "items": _ref("Heartbeat")})
    new_admin = {**_object(username={"type": "string"}, password={"type": "string"}),
                 "additionalProperties": False}
    filters = [
        _query("state", "Only messages in this state.",
               {"enum": ["all", "queued", "leased", "failed"], "default": "all"}),
        _query("recipient", "Only recipients containing this text (case-insensitive).",
               {"type": "string", "maxLength": 254}),
        _query("limit", "Messages per page.",
               {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
        _query("offset", "Messages to skip (oldest first, by id).",
               {"type": "integer", "minimum": 0, "maximum": 2**31, "default": 0}),
    ]
    return {
        "/api/openapi.json": {"get": {
            "summary": "This document", "tags": ["meta"], "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")}}},
        "/api/status": {"get": _operation(
            "Queue counts, circuit-breaker pause and process heartbeats", status, "",
            tag="status")},
        "/api/settings": {
            "get": _operation("Every runtime setting, secrets masked", _ref("SettingsAnswer"),
                              "", tag="settings"),
            "patch": _operation(
                "Change settings: all of them or none, each change audited",
                _ref("SettingsAnswer"), "400 413 415 422", tag="settings", admin=True,
                body=_ref("SettingsChange")),
        },
        "/api/queue": {"get": _operation("Messages in the queue (never their bodies)",
                                         listing, "422", tag="queue", parameters=filters)},
        "/api/queue/retry-failed": {"post": _operation(
            "Queue every failed message that may still be sent",
            _ok(retried={"type": "integer"}, still_failed={"type": "integer"}), "",
            tag="queue", admin=True)},
        "/api/queue/purge-failed": {"post": _operation(
            "Delete every failed message for good", _ok(purged={"type": "integer"}), "",
            tag="queue", admin=True)},
        "/api/queue/{queue_id}": {
            "parameters": [queue_id],
            "get": _operation("One message and its delivery attempts", message, "404",
                              tag="queue"),
            "delete": _operation("Delete a failed message for good",
                                 _ok(deleted={"type": "integer"}), "404 409", tag="queue",
                                 admin=True),
        },
        "/api/queue/{queue_id}/retry": {"parameters": [queue_id], "post": _operation(
            "Retry now: a failed message is queued again, a waiting one becomes due",
            _ref("MessageAnswer"), "404 409", tag="queue", admin=True)},
        "/api/admins": {
            "get": _operation("Panel administrators",
                              _ok(admins={"type": "array", "items": _ref("Admin")}), "",
                              tag="admins"),
            "post": _operation("Create an administrator", _ref("AdminAnswer"),
                               "400 409 413 415 422", tag="admins", status="201",
                               admin=True, body=new_admin),
        },
        "/api/admins/{admin_id}/disable": {"parameters": [admin_id], "post": _operation(
            "Disable an administrator and end their sessions", _ref("AdminAnswer"),
            "404 409", tag="admins", admin=True)},
        "/api/admins/{admin_id}/enable": {"parameters": [admin_id], "post": _operation(
            "Enable an administrator", _ref("AdminAnswer"), "404 409", tag="admins",
            admin=True)},
    }


def document(root: str = "") -> dict[str, Any]:
    """The whole document; `root` is the path prefix the panel is published under."""
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "MAIL_API admin API",
            "version": "1",
            "description": "Automation for the MAIL_API control panel. Authenticate with "
                           "`Authorization: Bearer <API key>` (keys are created on the "
                           "panel's API keys page, read or admin scope). When the bootstrap "
                           "configuration sets `[panel] loopback_api_without_auth = true`, "
                           "direct loopback callers without forwarding headers need no key. "
                           "Every change is recorded in the audit log.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "An API key (mk_…)."}},
        },
        "security": [{"apiKey": []}],
    }
    if root:
        spec["servers"] = [{"url": root}]
    return spec
