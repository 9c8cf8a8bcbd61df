"""GET/POST /templates: edit, preview with sample data and save the message templates."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mailapi.rendering import (
    MESSAGE_TYPES,
    RenderedMessage,
    Renderer,
    TemplateError,
    TemplateSources,
    sample_context,
)
from mailapi.settings import Settings
from panel.auth import require_post, require_session
from panel.forms import Submission, redisplay
from panel.web import Form, flash, panel_state, redirect, render

PARTS = ("subject", "text", "html")
TEXT_KEYS = tuple(f"template_{kind}_{part}" for kind in MESSAGE_TYPES for part in PARTS)
OPTION_KEYS = ("template_include_token", "template_include_expiry", "template_include_link")
KEYS = OPTION_KEYS + TEXT_KEYS
# The rendered HTML runs in an opaque origin with no script, no network and no forms; it may
# be framed by the panel page only.
PREVIEW_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; "
                               "img-src data:; frame-ancestors 'self'",
    "X-Frame-Options": "SAMEORIGIN",
}


def render_samples(sources: TemplateSources) -> tuple[dict[str, RenderedMessage], dict[str, str]]:
    """Each message type rendered with sample data, and every error by settings key.

    Each template is compiled on its own first, so every syntax error is reported at once;
    a type whose templates all compile is then rendered as the receiver would render it.
    """
    errors: dict[str, str] = {}
    for name, text in sources.texts.items():
        try:
            Renderer(replace(sources, texts={name: text}))
        except TemplateError as exc:
            errors[f"template_{exc.template}"] = exc.detail
    rendered: dict[str, RenderedMessage] = {}
    for message_type in MESSAGE_TYPES:
        texts = {f"{message_type}_{part}": sources.texts[f"{message_type}_{part}"]
                 for part in PARTS}
        if any(f"template_{name}" in errors for name in texts):
            continue
        try:
            rendered[message_type] = Renderer(replace(sources, texts=texts)).render(
                message_type, sample_context(message_type))
        except TemplateError as exc:
            errors[f"template_{exc.template}"] = exc.detail
    return rendered, errors


def read_templates_form(form: Form) -> Submission:
    submission = Submission().read(form, OPTION_KEYS)
    for key in TEXT_KEYS:
        # Browsers send textarea lines with CRLF; store them as typed, with LF.
        submission.parse(key, form.get(key).replace("\r\n", "\n"))
    return submission


def edited_sources(submission: Submission) -> TemplateSources:
    typed = submission.typed
    return TemplateSources(
        {key.removeprefix("template_"): str(typed.get(key, "")) for key in TEXT_KEYS},
        include_token=bool(typed.get("template_include_token")),
        include_expiry=bool(typed.get("template_include_expiry")),
        include_link=bool(typed.get("template_include_link")),
    )


def _page(request: Request, settings: Settings, *, rendered: dict[str, RenderedMessage],
          errors: dict[str, str], typed: dict[str, Any] | None = None,
          previewing_saved: bool = True, status_code: int = 200) -> Response:
    return render(request, "template_editor.html", {
        "values": redisplay(settings, KEYS, typed or {}),
        "errors": errors,
        "message_types": MESSAGE_TYPES,
        "rendered": rendered,
        "previewing_saved": previewing_saved,
    }, status_code=status_code, title="Templates")


async def show(request: Request) -> Response:
    await require_session(request)
    settings = panel_state(request).settings.get()
    rendered, errors = render_samples(TemplateSources.from_settings(settings))
    return _page(request, settings, rendered=rendered, errors=errors)


async def save(request: Request) -> Response:
    """Save, or with the Preview button render the edited templates without saving."""
    session, form = await require_post(request)
    current = panel_state(request).settings.get()
    submission = read_templates_form(form)
    rendered, errors = render_samples(edited_sources(submission))
    for key, message in errors.items():
        submission.reject(key, message)
    if form.get("action") == "preview":
        return _page(request, current, rendered=rendered, errors=submission.errors,
                     typed=submission.typed, previewing_saved=False,
                     status_code=200 if submission.valid else 400)
    if await submission.save(request, session) is None:
        return _page(request, current, rendered=rendered, errors=submission.errors,
                     typed=submission.typed, previewing_saved=False, status_code=400)
    await flash(request, "success", "Templates saved.")
    return redirect(request, "/templates")


async def html_preview(request: Request) -> Response:
    """The saved HTML body rendered with sample data, for the page's sandboxed iframe."""
    await require_session(request)
    message_type = request.path_params["message_type"]
    if message_type not in MESSAGE_TYPES:
        raise HTTPException(404)
    settings = panel_state(request).settings.get()
    try:
        rendered = Renderer(TemplateSources.from_settings(settings)).render(
            message_type, sample_context(message_type))
    except TemplateError as exc:
        return Response(f"The template does not render: {exc}\n", status_code=500,
                        media_type="text/plain", headers=PREVIEW_HEADERS)
    body = rendered.html if rendered.html is not None else (
        "<!doctype html><p>No HTML body: this message type is sent as plain text only.</p>")
    return HTMLResponse(body, headers=PREVIEW_HEADERS)


routes = [
    Route("/templates", show, methods=["GET"]),
    Route("/templates", save, methods=["POST"]),
    Route("/templates/preview/{message_type}.html", html_preview, methods=["GET"]),
]
