"""mailapi.rendering.renderer: sandboxed, strict Jinja2 over admin-edited templates."""

from datetime import UTC, datetime
from typing import Any

import pytest

from mailapi.rendering import (
    MESSAGE_TYPES,
    Renderer,
    TemplateError,
    TemplateSources,
    sample_context,
)
from mailapi.rendering.defaults import DEFAULT_TEMPLATES

EXPIRES = datetime(2026, 2, 21, 6, 35, 10, tzinfo=UTC)


def _context(message_type: str = "email_verification", **changes: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "type": message_type,
        "to": "user@example.com",
        "subject": "Please verify",
        "token": "TOKEN-987654",
        "expires_at": EXPIRES,
        "link": "https://example.com/verify?token=TOKEN-987654",
    }
    context.update(changes)
    return context


def _renderer(*, include_token: bool = True, include_expiry: bool = True,
              include_link: bool = True, **overrides: str) -> Renderer:
    texts = dict(DEFAULT_TEMPLATES)
    texts.update(overrides)
    return Renderer(TemplateSources(texts, include_token, include_expiry, include_link))


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_default_templates_render(message_type: str) -> None:
    message = _renderer().render(message_type, _context(message_type))
    assert message.subject == "Please verify"
    assert message.html is not None
    for part in (message.text, message.html):
        assert "user@example.com" in part
        assert "TOKEN-987654" in part
        assert "https://example.com/verify?token=TOKEN-987654" in part
        assert "2026-02-21 06:35 UTC" in part
    assert message.html.lstrip().startswith("<!doctype html>")


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_sample_context_renders_and_check_passes(message_type: str) -> None:
    renderer = _renderer()
    renderer.check()
    assert renderer.render(message_type, sample_context(message_type)).subject


def test_include_token_false_removes_token() -> None:
    context = _context("password_reset", link="https://example.com/reset")
    message = _renderer(include_token=False).render("password_reset", context)
    assert message.html is not None
    assert "987654" not in message.text
    assert "987654" not in message.html
    assert "Your reset code" not in message.text
    assert "Your reset code" not in message.html


def test_include_token_false_with_template_needing_token_fails() -> None:
    renderer = _renderer(include_token=False, email_verification_text="code {{ token }}")
    with pytest.raises(TemplateError) as caught:
        renderer.render("email_verification", _context())
    assert caught.value.template == "email_verification_text"


def test_include_expiry_and_link_false() -> None:
    message = _renderer(include_expiry=False, include_link=False).render(
        "email_verification", _context())
    assert "expires" not in message.text
    assert "https://" not in message.text
    assert message.html is not None
    assert "href" not in message.html


def test_missing_link_is_left_out() -> None:
    message = _renderer().render("email_verification", _context(link=None))
    assert "Open this link" not in message.text
    assert "TOKEN-987654" in message.text


def test_expires_at_converted_to_utc_text() -> None:
    renderer = _renderer(email_verification_text="{{ expires_at }}")
    moment = datetime.fromisoformat("2026-02-21T08:35:10+02:00")
    assert renderer.render("email_verification",
                           _context(expires_at=moment)).text == "2026-02-21 06:35 UTC"


def test_strict_undefined_raises() -> None:
    renderer = _renderer(email_verification_text="Hello {{ no_such_name }}")
    with pytest.raises(TemplateError) as caught:
        renderer.render("email_verification", _context())
    assert caught.value.template == "email_verification_text"
    assert "no_such_name" in caught.value.detail


def test_check_finds_undefined_variable() -> None:
    with pytest.raises(TemplateError):
        _renderer(password_reset_html="<p>{{ tokn }}</p>").check()


def test_syntax_error_at_construction() -> None:
    with pytest.raises(TemplateError) as caught:
        _renderer(password_reset_subject="{% if %}")
    assert caught.value.template == "password_reset_subject"
    assert caught.value.detail.startswith("line 1:")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ to.__class__.__base__.__subclasses__() }}",
        "{{ (1).__class__ }}",
    ],
)
def test_sandbox_refuses_internals(source: str) -> None:
    renderer = _renderer(email_verification_text=source)
    with pytest.raises(TemplateError) as caught:
        renderer.render("email_verification", _context())
    assert caught.value.template == "email_verification_text"
    assert "is unsafe" in caught.value.detail


def test_sandbox_error_is_jinja_security_error() -> None:
    import jinja2.exceptions

    renderer = _renderer(email_verification_text="{{ ''.__class__ }}")
    with pytest.raises(TemplateError) as caught:
        renderer.render("email_verification", _context())
    assert isinstance(caught.value.__cause__, jinja2.exceptions.SecurityError)


@pytest.mark.parametrize("source", ["{{ 1 / 0 }}", "{{ range(10**9) | list }}"])
def test_runtime_errors_become_template_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        _renderer(email_verification_text=source).render("email_verification", _context())


def test_html_autoescaped_text_not() -> None:
    message = _renderer().render("email_verification", _context(token="<script>x</script>"))
    assert message.html is not None
    assert "&lt;script&gt;x&lt;/script&gt;" in message.html
    assert "<script>" not in message.html
    assert "<script>x</script>" in message.text


def test_payload_values_are_not_evaluated() -> None:
    context = _context(token="{{7*7}}", subject="{{ 7*7 }} {% raw %}", to="a{#b#}@x.com")
    message = _renderer().render("email_verification", context)
    assert message.subject == "{{ 7*7 }} {% raw %}"
    assert "{{7*7}}" in message.text
    assert "49" not in message.text
    assert message.html is not None
    assert "{{7*7}}" in message.html
    assert "a{#b#}@x.com" in message.text


def test_subject_folded_to_one_line() -> None:
    renderer = _renderer(email_verification_subject="  Hello\n  {{ subject }}\n")
    assert renderer.render("email_verification", _context()).subject == "Hello Please verify"


def test_empty_subject_refused() -> None:
    renderer = _renderer(email_verification_subject="{% if false %}x{% endif %}  \n")
    with pytest.raises(TemplateError, match="empty subject"):
        renderer.render("email_verification", _context())


def test_empty_html_template_gives_text_only() -> None:
    message = _renderer(email_verification_html="  \n").render("email_verification", _context())
    assert message.html is None
    assert "TOKEN-987654" in message.text


def test_text_template_keeps_trailing_newline() -> None:
    message = _renderer(email_verification_text="code {{ token }}\n").render(
        "email_verification", _context())
    assert message.text == "code TOKEN-987654\n"
