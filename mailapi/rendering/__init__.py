"""Template rendering at enqueue: one sandboxed, strict Jinja2 environment per settings revision."""

from mailapi.rendering.renderer import (
    MESSAGE_TYPES,
    RenderedMessage,
    Renderer,
    TemplateError,
    TemplateSources,
    sample_context,
)

__all__ = [
    "MESSAGE_TYPES",
    "RenderedMessage",
    "Renderer",
    "TemplateError",
    "TemplateSources",
    "sample_context",
]
