"""HTTP routes of the ProCache front-end on the host's server under ``/procache/`` (aiohttp glue only:
the answers are ``nodes/preset_payloads.py`` and ``nodes/preview.py``).

The host also serves every route under ``/api/...``; the front-end calls them through
``api.fetchApi("/procache/...")``.

* ``GET  /procache/presets``          every preset (shipped and user) with a summary: steps, family,
                                       counts, estimated compute fraction, source (shipped | user).
* ``GET  /procache/presets/{name}``   one preset: its YAML text, the summary and the actions string.
                                       ``name`` is a listed name ("fast-dit", "user/mine").
* ``POST /procache/presets``           JSON ``{name, yaml}`` or ``{name, actions, family, model, selective}``
                                       (+ ``overwrite: true`` to replace an existing *user* preset).
                                       Writes ``<user dir>/procache_presets/<name>.yaml`` and nothing else.
* ``GET  /procache/preview``          ``?actions=FCS..|preset=name&steps=N`` -> what an N-step run uses
                                       (the run planner on even noise), with counts and compute estimate.
* ``POST /procache/preview``          JSON ``{text|actions|preset, steps, selective, start_percent, ...}``;
                                       ``text`` is what a user typed into the Schedule Loader.

Every refusal is HTTP 4xx with JSON ``{"error": message, "field": ..., "fix": ...}``. Every answer carries
a ``Server-Timing`` header (handler wall and CPU time); ``PROCACHE_ROUTE_TIMING=1`` adds the detail of
``nodes/route_timing.py`` (loaded only then).

The extension registers the routes when it starts (``nodes/extension.py`` calls :func:`register_on_host`);
importing this module registers nothing.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from ..procache_core.errors import ProCacheError
from .preset_payloads import MAX_BODY_BYTES, get_payload, list_body, save_payload, sweep_stale_temp_files, warm_index
from .preview import preview_payload
from .route_errors import RouteError, scrub_paths

log = logging.getLogger("ProCache")

_timing: Any = None      # nodes/route_timing, once register() found PROCACHE_ROUTE_TIMING=1


def _json(status: int, payload: dict[str, Any]) -> web.Response:
    return web.json_response(payload, status=status)


def _server_timing(t0: float, c0: float, rq0: float | None, extra: dict[str, float]) -> str:
    """``Server-Timing`` value: the handler's wall time, the event-loop thread's CPU time in it, and what
    the handler measured itself (``extra``: reading the body, work done on the save thread)."""
    parts = [f"handler;dur={(time.perf_counter() - t0) * 1e3:.2f}", f"cpu;dur={(time.thread_time() - c0) * 1e3:.2f}"]
    if _timing is not None:
        parts += _timing.runqueue_parts(rq0)
    parts += [f"{k};dur={v:.2f}" for k, v in extra.items()]
    if _timing is not None:
        parts += _timing.gc_parts()
    return ", ".join(parts)


def _guard(fn):
    async def handler(request: web.Request) -> web.Response:
        t0, c0 = time.perf_counter(), time.thread_time()
        rq0 = _timing.runqueue_wait_ms() if _timing is not None else None
        request["procache_timing"] = extra = {}
        try:
            resp = await fn(request)
        except RouteError as exc:
            resp = _json(exc.status, exc.body)
        except ProCacheError as exc:
            resp = _json(400, RouteError.from_procache(exc).body)
        except Exception as exc:  # never leak a traceback page to the UI
            log.exception("ProCache route %s failed", request.path)
            resp = _json(500, {"error": scrub_paths(f"ProCache: internal error ({type(exc).__name__}: {exc})",
                                                    any_path=True), "field": "server"})
        resp.headers["Server-Timing"] = _server_timing(t0, c0, rq0, extra)
        return resp
    handler.__name__ = fn.__name__
    return handler


async def _read_json(request: web.Request) -> Any:
    t0 = time.perf_counter()
    try:
        return await _read_json_body(request)
    finally:
        timing = request.get("procache_timing")
        if timing is not None:
            timing["body"] = (time.perf_counter() - t0) * 1e3


async def _read_json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RouteError(413, f"ProCache: the request is larger than {MAX_BODY_BYTES // 1024} KiB.", "body",
                         "a preset is a few lines.")
    chunks: list[bytes] = []
    total = 0
    while True:  # StreamReader.read(n) may return less than n: read to the end, but never past the limit
        chunk = await request.content.read(16 * 1024)
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise RouteError(413, f"ProCache: the request is larger than {MAX_BODY_BYTES // 1024} KiB.", "body",
                             "a preset is a few lines.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RouteError(400, f"ProCache: the request body is not JSON ({exc}).", "body",
                         "send Content-Type: application/json with a JSON object.") from None


@_guard
async def handle_list(request: web.Request) -> web.Response:
    return web.Response(text=list_body(), content_type="application/json")


@_guard
async def handle_get(request: web.Request) -> web.Response:
    return _json(200, get_payload(request.match_info["name"]))


# Saves write files: a slow disk must not stall the event loop (every other request of the UI and the
# host waits behind it). One thread, so saves still run one at a time, in the order they came.
_SAVE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procache-save")


def _timed_save(data: Any, timing: dict[str, float]) -> tuple[int, dict[str, Any]]:
    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        return save_payload(data)
    finally:
        timing["save_thread"] = (time.perf_counter() - t0) * 1e3
        timing["save_thread_cpu"] = (time.thread_time() - c0) * 1e3


@_guard
async def handle_save(request: web.Request) -> web.Response:
    data = await _read_json(request)
    status, payload = await asyncio.get_running_loop().run_in_executor(
        _SAVE_THREAD, _timed_save, data, request["procache_timing"])
    return _json(status, payload)


@_guard
async def handle_preview_get(request: web.Request) -> web.Response:
    return _json(200, preview_payload(dict(request.query)))


@_guard
async def handle_preview_post(request: web.Request) -> web.Response:
    data = await _read_json(request)
    if not isinstance(data, dict):
        raise RouteError(400, "ProCache: the request body must be a JSON object.", "body",
                         "send {\"text\": ..., \"steps\": N}.")
    return _json(200, preview_payload(data))


@_guard
async def handle_gc_pauses(request: web.Request) -> web.Response:
    """The recorded GC pauses (registered only with PROCACHE_ROUTE_TIMING=1, for benchmarks/load.py)."""
    return _json(200, _timing.GC.payload())


def register(routes: web.RouteTableDef) -> None:
    """Adds the /procache/ routes to ``routes`` (and, with PROCACHE_ROUTE_TIMING=1, the timing detail)."""
    global _timing
    routes.get("/procache/presets")(handle_list)
    routes.post("/procache/presets")(handle_save)
    routes.get("/procache/presets/{name:.+}")(handle_get)
    routes.get("/procache/preview")(handle_preview_get)
    routes.post("/procache/preview")(handle_preview_post)
    if os.environ.get("PROCACHE_ROUTE_TIMING") == "1":
        from . import route_timing

        route_timing.install()
        _timing = route_timing
        routes.get("/procache/timing/gc")(handle_gc_pauses)


def register_on_host() -> bool:
    """Registers the routes on the running host's server (once, however often it is called): what the
    extension does when it starts. False without a host or when they are registered already."""
    try:
        from server import PromptServer  # the host's module; absent outside ComfyUI
    except Exception:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None or getattr(instance, "_procache_routes", False):
        return False
    register(instance.routes)
    instance._procache_routes = True
    app = getattr(instance, "app", None)
    if app is not None:
        from . import gc_freeze

        try:
            app.on_startup.append(gc_freeze.on_startup)
        except RuntimeError:  # the app already started (its signals are frozen): nothing to tune then
            pass
    sweep_stale_temp_files()
    _SAVE_THREAD.submit(warm_index)
    return True
