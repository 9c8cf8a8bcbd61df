"""The admin JSON API: API keys and scopes, loopback access, settings, queue, admins, OpenAPI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from starlette.routing import Route

from mailapi import accounts
from mailapi.db import read_transaction, write_transaction
from mailapi.models import audit_log
from mailapi.settings import load_settings
from tests.panel.test_queue_view import TOKEN, add_message, fail_due, message, record
from tests.support.panel import Panel, PanelClient


def make_key(panel: Panel, scope: str, *, name: str = "deploy",
             expires_at: float | None = None) -> str:
    with write_transaction(panel.engine) as connection:
        _, plain = accounts.create_api_key(connection, name, scope, expires_at=expires_at,
                                           actor="test", source="test", now=panel.clock())
    return plain


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_entries(panel: Panel, action: str) -> list[tuple[str, str, str, str | None]]:
    a = audit_log.c
    with read_transaction(panel.engine) as connection:
        return [(row.actor, row.target, row.source, row.detail) for row in connection.execute(
            select(a.actor, a.target, a.source, a.detail).where(a.action == action)
            .order_by(a.id))]


@pytest.fixture
def api(panel: Panel) -> PanelClient:
    return panel.client()


@pytest.fixture
def admin_key(panel: Panel) -> dict[str, str]:
    return bearer(make_key(panel, "admin"))


@pytest.fixture
def read_key(panel: Panel) -> dict[str, str]:
    return bearer(make_key(panel, "read", name="monitoring"))


@pytest.fixture
def loopback_panel(engine: Engine, tmp_path: Path) -> Iterator[Panel]:
    instance = Panel(engine, tmp_path, extra_config="loopback_api_without_auth = true")
    yield instance
    instance.close()


def test_no_bad_revoked_or_expired_key_is_401(panel: Panel, api: PanelClient) -> None:
    missing = api.get("/api/status")
    assert missing.status_code == 401 and missing.json()["ok"] is False
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert api.get("/api/status", headers=bearer("mk_not-a-real-key")).status_code == 401
    assert api.get("/api/status", headers={"Authorization": "Basic YTpi"}).status_code == 401
    with write_transaction(panel.engine) as connection:
        key, plain = accounts.create_api_key(connection, "old", "admin", expires_at=None,
                                             actor="test", source="test", now=panel.clock())
        accounts.revoke_api_key(connection, key.id, actor="test", source="test",
                                now=panel.clock())
    assert api.get("/api/status", headers=bearer(plain)).status_code == 401
    expiring = make_key(panel, "admin", name="short", expires_at=panel.clock() + 60)
    assert api.get("/api/status", headers=bearer(expiring)).status_code == 200
    panel.clock.advance(61)
    assert api.get("/api/status", headers=bearer(expiring)).status_code == 401


def test_read_scope_reads_but_cannot_change(panel: Panel, api: PanelClient,
                                            read_key: dict[str, str]) -> None:
    queue_id = add_message(panel, "alice")
    fail_due(panel)
    status = api.get("/api/status", headers=read_key).json()
    assert status["queue"] == {"queued": 0, "leased": 0, "failed": 1}
    assert {beat["process"] for beat in status["heartbeats"]} == {"panel", "receiver",
                                                                   "worker"}
    assert api.get("/api/settings", headers=read_key).status_code == 200
    for method, path in (("POST", f"/api/queue/{queue_id}/retry"),
                         ("DELETE", f"/api/queue/{queue_id}"),
                         ("POST", "/api/queue/purge-failed"),
                         ("PATCH", "/api/settings")):
        response = api.request(method, path, headers=read_key, json={})
        assert response.status_code == 403, (method, path)
        assert response.json() == {"ok": False, "error": "this API key is read-only"}
    row = message(panel, queue_id)
    assert row is not None and row.state == "failed"


def test_loopback_without_auth_only_when_enabled(panel: Panel, api: PanelClient) -> None:
    assert not panel.config.panel.loopback_api_without_auth
    assert api.get("/api/status").status_code == 401


def test_loopback_without_auth_refuses_proxied_and_remote_callers(
        loopback_panel: Panel) -> None:
    local = loopback_panel.client()
    assert local.get("/api/status").status_code == 200
    assert local.get("/api/status", headers={"X-Forwarded-For": "198.51.100.1"}
                     ).status_code == 401
    remote = loopback_panel.client(peer=("203.0.113.5", 1234))
    assert remote.get("/api/status").status_code == 401
    # A page on another site cannot drive the keyless loopback API through a browser.
    add_message(loopback_panel, "zoe")
    fail_due(loopback_panel)
    cross = local.request("POST", "/api/queue/purge-failed", headers={
        "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    purged = local.request("POST", "/api/queue/purge-failed")
    assert purged.json() == {"ok": True, "purged": 1}
    assert audit_entries(loopback_panel, "queue.purge") == [
        ("loopback", "all failed", "127.0.0.1", "1 message(s)")]


def test_settings_are_masked_and_patched_all_or_nothing(panel: Panel, api: PanelClient,
                                                        admin_key: dict[str, str]) -> None:
    answer = api.request("PATCH", "/api/settings", headers=admin_key, json={
        "smtp_port": 2525, "smtp_password": "hunter2-upstream", "trusted_proxies": ["10.0.0.1"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["settings"]["smtp_port"] == 2525 and body["settings"]["smtp_password"] == "********"
    assert "hunter2-upstream" not in answer.text
    revision = body["revision"]
    entries = audit_entries(panel, "setting.changed")
    actor = entries[0][0]
    assert actor.startswith("apikey:deploy (mk_") and {e[1] for e in entries} == {
        "smtp_port", "smtp_password", "trusted_proxies"}
    assert [e[3] for e in entries if e[1] == "smtp_password"] == ["(secret changed)"]
    assert all(entry[2] == "127.0.0.1" for entry in entries)
    # One bad value and nothing is stored.
    bad = api.request("PATCH", "/api/settings", headers=admin_key,
                      json={"smtp_port": 2626, "smtp_security": "carrier-pigeon"})
    assert bad.status_code == 422
    assert bad.json()["ok"] is False and bad.json()["field"] == "smtp_security"
    unknown = api.request("PATCH", "/api/settings", headers=admin_key, json={"nope": 1})
    assert unknown.status_code == 422 and unknown.json()["field"] == "nope"
    wrong_type = api.request("PATCH", "/api/settings", headers=admin_key,
                             json={"smtp_port": "25"})
    assert wrong_type.status_code == 422 and wrong_type.json()["field"] == "smtp_port"
    consistency = api.request("PATCH", "/api/settings", headers=admin_key,
                              json={"retry_base_seconds": 600, "retry_max_seconds": 60})
    assert consistency.status_code == 422
    assert consistency.json()["field"] == "retry_max_seconds"
    # Sending the mask back (a GET → edit → PATCH round trip) keeps the stored secret.
    current = api.get("/api/settings", headers=admin_key).json()
    assert current["revision"] == revision
    round_trip = api.request("PATCH", "/api/settings", headers=admin_key,
                             json={**current["settings"], "smtp_timeout": 45})
    assert round_trip.status_code == 200, round_trip.text
    with read_transaction(panel.engine) as connection:
        stored = load_settings(connection)
    assert (stored.smtp_port, stored.smtp_security, stored.smtp_timeout) == (2525, "starttls",
                                                                             45)
    assert stored.smtp_password == "hunter2-upstream"
    assert stored.retry_base_seconds == 30
    assert panel.state.settings.get().smtp_timeout == 45


def test_bodies_are_checked(api: PanelClient, admin_key: dict[str, str]) -> None:
    broken = api.request("PATCH", "/api/settings", headers={
        **admin_key, "Content-Type": "application/json"}, content=b"{not json")
    assert broken.status_code == 400 and broken.json()["ok"] is False
    nan = api.request("PATCH", "/api/settings", headers={
        **admin_key, "Content-Type": "application/json"}, content=b'{"smtp_timeout": NaN}')
    assert nan.status_code == 400
    form = api.request("PATCH", "/api/settings", headers=admin_key, data={"smtp_port": "25"})
    assert form.status_code == 415
    huge = api.request("PATCH", "/api/settings", headers=admin_key,
                       json={"template_password_reset_text": "x" * (300 * 1024)})
    assert huge.status_code == 413 and huge.json()["ok"] is False
    listed = api.request("PATCH", "/api/settings", headers=admin_key, json=[1, 2])
    assert listed.status_code == 422
    surrogate = api.request("PATCH", "/api/settings", headers={
        **admin_key, "Content-Type": "application/json"}, content=b'{"\\ud800": 1}')
    assert surrogate.status_code == 400
    wrong_method = api.request("PUT", "/api/settings", headers=admin_key)
    assert wrong_method.status_code == 405 and wrong_method.json()["ok"] is False
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH"}


def test_queue_listing_detail_and_paging(panel: Panel, api: PanelClient,
                                         read_key: dict[str, str]) -> None:
    failed = add_message(panel, "ann")
    fail_due(panel)
    waiting = [add_message(panel, f"user{number}") for number in range(3)]
    record(panel, failed, "failed", code=550, detail="5.1.1 unknown user")
    everything = api.get("/api/queue", headers=read_key).json()
    assert everything["total"] == 4
    assert [m["id"] for m in everything["messages"]] == [failed, *waiting]
    assert TOKEN not in json.dumps(everything)
    page = api.get("/api/queue?state=queued&limit=2&offset=1", headers=read_key).json()
    assert (page["total"], [m["id"] for m in page["messages"]]) == (3, waiting[1:])
    by_recipient = api.get("/api/queue?recipient=USER1", headers=read_key).json()
    assert [m["recipient"] for m in by_recipient["messages"]] == ["user1@example.com"]
    for query in ("state=bogus", "state=", "limit=0", "limit=501", "offset=-1", "limit=abc",
                  "limit=", "limit=%D9%A1", f"recipient={'a' * 255}"):
        answer = api.get(f"/api/queue?{query}", headers=read_key)
        assert answer.status_code == 422, query
        assert answer.json()["field"] == query.split("=")[0]
    detail = api.get(f"/api/queue/{failed}", headers=read_key).json()
    assert detail["message"]["state"] == "failed"
    assert detail["message"]["last_error"] == "550 5.1.1 mailbox unknown"
    assert [(a["outcome"], a["smtp_code"]) for a in detail["attempts"]] == [("failed", 550)]
    assert TOKEN not in json.dumps(detail)
    for path in ("/api/queue/987654", f"/api/queue/{2**70}", "/api/queue/abc"):
        missing = api.get(path, headers=read_key)
        assert missing.status_code == 404 and missing.json()["ok"] is False, path


def test_queue_changes_are_audited_with_the_key(panel: Panel, api: PanelClient,
                                                admin_key: dict[str, str]) -> None:
    first, second, expiring = (add_message(panel, "bea"), add_message(panel, "cid"),
                               add_message(panel, "dan", expires_in=60))
    fail_due(panel)
    waiting = add_message(panel, "eve")
    retried = api.request("POST", f"/api/queue/{first}/retry", headers=admin_key)
    assert retried.status_code == 200 and retried.json()["message"]["state"] == "queued"
    deleted = api.request("DELETE", f"/api/queue/{second}", headers=admin_key)
    assert deleted.json() == {"ok": True, "deleted": second} and message(panel, second) is None
    assert api.request("DELETE", f"/api/queue/{waiting}", headers=admin_key
                       ).status_code == 409
    assert api.request("DELETE", "/api/queue/99999", headers=admin_key).status_code == 404
    assert api.request("POST", "/api/queue/99999/retry", headers=admin_key
                    ).status_code == 404
    panel.clock.advance(120)
    expired = api.request("POST", f"/api/queue/{expiring}/retry", headers=admin_key)
    assert expired.status_code == 409 and "token expired" in expired.json()["error"]
    bulk = api.request("POST", "/api/queue/retry-failed", headers=admin_key).json()
    assert bulk == {"ok": True, "retried": 0, "still_failed": 1}
    purged = api.request("POST", "/api/queue/purge-failed", headers=admin_key).json()
    assert purged == {"ok": True, "purged": 1} and message(panel, expiring) is None
    retries = audit_entries(panel, "queue.retry")
    purges = audit_entries(panel, "queue.purge")
    assert [(target, detail) for _, target, _, detail in retries] == [
        (str(first), "1 message(s)")]
    assert [(target, detail) for _, target, _, detail in purges] == [
        (str(second), "1 message(s)"), ("all failed", "1 message(s)")]
    assert all(actor.startswith("apikey:deploy (mk_") for actor, *_ in retries + purges)


def test_admins_are_listed_created_and_disabled(panel: Panel, api: PanelClient,
                                                admin_key: dict[str, str]) -> None:
    panel.create_admin("root")
    created = api.request("POST", "/api/admins", headers=admin_key,
                       json={"username": "ops", "password": "a long enough password"})
    assert created.status_code == 201, created.text
    ops = created.json()["admin"]
    assert ops["username"] == "ops" and ops["created_by"].startswith("apikey:deploy")
    assert "password" not in json.dumps(created.json()).replace("password_changed_at", "")
    duplicate = api.request("POST", "/api/admins", headers=admin_key,
                         json={"username": "ops", "password": "another long password"})
    assert duplicate.status_code == 409
    weak = api.request("POST", "/api/admins", headers=admin_key,
                    json={"username": "weak", "password": "short"})
    assert weak.status_code == 422 and "at least 12" in weak.json()["error"]
    for incomplete in ({"username": "x"}, {"username": "x", "password": 12345678901234},
                       {"username": "yan", "password": "a long enough password", "admin": 1}):
        assert api.request("POST", "/api/admins", headers=admin_key,
                           json=incomplete).status_code == 422
    names = [a["username"] for a in api.get("/api/admins", headers=admin_key).json()["admins"]]
    assert names == ["ops", "root"]
    disabled = api.request("POST", f"/api/admins/{ops['id']}/disable", headers=admin_key)
    assert disabled.json()["admin"]["disabled"] is True
    root_id = next(a["id"] for a in api.get("/api/admins", headers=admin_key).json()["admins"]
                   if a["username"] == "root")
    last = api.request("POST", f"/api/admins/{root_id}/disable", headers=admin_key)
    assert last.status_code == 409 and "last active admin" in last.json()["error"]
    enabled = api.request("POST", f"/api/admins/{ops['id']}/enable", headers=admin_key)
    assert enabled.json()["admin"]["disabled"] is False
    assert api.request("POST", "/api/admins/4040/enable", headers=admin_key
                    ).status_code == 404
    actions = [(actor.split(" ")[0], target) for actor, target, _, _ in (
        audit_entries(panel, "admin.created")[1:] + audit_entries(panel, "admin.disabled")
        + audit_entries(panel, "admin.enabled"))]
    assert actions == [("apikey:deploy", "ops")] * 3


# --- the OpenAPI document -----------------------------------------------------------------

def served_operations(panel: Panel) -> set[tuple[str, str]]:
    """(path template, method) of every /api/ route the app serves."""
    served = set()
    for route in panel.app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            served |= {(path, method.lower()) for method in route.methods or ()
                       if method != "HEAD"}
    return served


def resolve(document: dict[str, Any], reference: str) -> Any:
    assert reference.startswith("#/"), reference
    node: Any = document
    for part in reference[2:].split("/"):
        node = node[part]
    return node


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def test_openapi_document_describes_exactly_the_served_api(panel: Panel,
                                                           api: PanelClient) -> None:
    response = api.get("/api/openapi.json")  # no key needed
    assert response.status_code == 200
    document = json.loads(response.text)
    assert document["openapi"] == "3.1.0"
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    assert documented == served_operations(panel)
    for reference in references(document):
        assert resolve(document, reference) is not None
    for path, method in documented:
        operation = document["paths"][path][method]
        assert operation["responses"], (path, method)
        named = set(re.findall(r"\{(\w+)\}", path))
        declared = {p["name"] for p in document["paths"][path].get("parameters", [])
                    if p["in"] == "path"}
        assert named == declared, path
        if method in ("post", "patch", "delete"):
            assert "403" in operation["responses"], (path, method)


def test_answers_match_the_documented_schemas(panel: Panel, api: PanelClient,
                                              admin_key: dict[str, str]) -> None:
    document = api.get("/api/openapi.json").json()
    schemas = document["components"]["schemas"]
    add_message(panel, "fay")
    record(panel, 1, "deferred", code=451, detail="later")
    detail = api.get("/api/queue/1", headers=admin_key).json()
    assert set(detail["message"]) == set(schemas["Message"]["properties"])
    assert set(detail["attempts"][0]) == set(schemas["Attempt"]["properties"])
    settings = api.get("/api/settings", headers=admin_key).json()
    assert set(settings["settings"]) == set(schemas["Settings"]["properties"])
    types = {"boolean": bool, "integer": int, "number": float, "string": str, "array": list}
    for key, value in settings["settings"].items():
        assert isinstance(value, types[schemas["Settings"]["properties"][key]["type"]]), key
    status = api.get("/api/status", headers=admin_key).json()
    assert set(status["heartbeats"][0]) == set(schemas["Heartbeat"]["properties"])
    status_schema = document["paths"]["/api/status"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    assert set(status) == set(status_schema["properties"])
    panel.create_admin("gus")
    admins = api.get("/api/admins", headers=admin_key).json()["admins"]
    assert set(admins[0]) == set(schemas["Admin"]["properties"])
