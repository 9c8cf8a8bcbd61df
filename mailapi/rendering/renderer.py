"""Render subject, text and HTML for one message from the admin-edited templates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

MESSAGE_TYPES = ("email_verification", "password_reset")
_PARTS = ("subject", "text", "html")


class TemplateError(Exception):
    """A template does not compile or does not render with the given context."""

    def __init__(self, template: str, detail: str) -> None:
        super().__init__(f"template {template}: {detail}")
        self.template = template
        self.detail = detail


@dataclass(frozen=True)
class TemplateSources:
    """The six template texts and the include options, as one value."""

    texts: Mapping[str, str]  # "<type>_<part>" -> source
    include_token: bool = True
    include_expiry: bool = True
    include_link: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> TemplateSources:
        texts = {
            f"{kind}_{part}": getattr(settings, f"template_{kind}_{part}")
            for kind in MESSAGE_TYPES
            for part in _PARTS
        }
        return cls(texts, settings.template_include_token, settings.template_include_expiry,
                   settings.template_include_link)


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str | None


def sample_context(message_type: str) -> dict[str, Any]:
    """Plausible values for previews and for the test render done when a template is saved."""
    return {
        "type": message_type,
        "to": "someone@example.com",
        "subject": "Verify your email" if message_type == "email_verification"
        else "Reset your password",
        "token": "123456",
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
        "link": "https://example.com/verify?token=123456",
    }


class Renderer:
    """One sandboxed environment over a fixed set of template sources.

    Sandboxed because admins edit the templates; StrictUndefined so a typo fails the save
    instead of sending a message with a hole in it; HTML autoescaped, text not.
    """

    def __init__(self, sources: TemplateSources) -> None:
        self.sources = sources
        loader = jinja2.DictLoader(
            {f"{name}.html" if name.endswith("_html") else f"{name}.txt": text
             for name, text in sources.texts.items()}
        )
        self._environment = SandboxedEnvironment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                                default_for_string=False, default=False),
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self._templates: dict[str, jinja2.Template] = {}
        for name in sources.texts:
            filename = f"{name}.html" if name.endswith("_html") else f"{name}.txt"
            try:
                self._templates[name] = self._environment.get_template(filename)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(name, f"line {exc.lineno}: {exc.message}") from exc

    def render(self, message_type: str, context: Mapping[str, Any]) -> RenderedMessage:
        """Render the three parts; values the include options exclude are not passed at all."""
        values = dict(context)
        if not self.sources.include_token:
            values.pop("token", None)
        if not self.sources.include_expiry:
            values.pop("expires_at", None)
        if not self.sources.include_link or values.get("link") is None:
            values.pop("link", None)
        if isinstance(values.get("expires_at"), datetime):
            values["expires_at"] = values["expires_at"].astimezone(UTC).strftime(
                "%Y-%m-%d %H:%M UTC")
        subject = self._render_one(f"{message_type}_subject", values)
        text = self._render_one(f"{message_type}_text", values)
        html_source = self.sources.texts.get(f"{message_type}_html", "")
        html = self._render_one(f"{message_type}_html", values) if html_source.strip() else None
        # A subject is one line: template newlines are folded to spaces here, while newlines
        # that came from the caller's data were already refused by the receiver.
        subject = " ".join(subject.split())
        if not subject:
            raise TemplateError(f"{message_type}_subject", "renders to an empty subject")
        return RenderedMessage(subject=subject, text=text, html=html)

    def _render_one(self, name: str, values: Mapping[str, Any]) -> str:
        try:
            return self._templates[name].render(values)
        except jinja2.TemplateError as exc:
            raise TemplateError(name, str(exc)) from exc
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            raise TemplateError(name, f"{type(exc).__name__}: {exc}") from exc

    def check(self) -> None:
        """Render every template with sample data under the configured include options."""
        for message_type in MESSAGE_TYPES:
            self.render(message_type, sample_context(message_type))
