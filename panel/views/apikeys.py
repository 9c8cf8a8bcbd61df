"""(being built) — see panel/app.py for how routes are collected."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
