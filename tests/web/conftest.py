"""Fixtures of the web tests: one real ComfyUI server (own user folder) and headless Chromium.

The browser is Debian's /usr/bin/chromium driven by the Python `playwright` package; both are
installed by scripts/setup_browser.sh (never `playwright install`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from comfy_client import COMFY_DIR, ComfyServer  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("PROCACHE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

# Settings that keep first-run dialogs and tours out of the way of the tests.
UI_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.InstalledVersion": "9.9.9",
    "Comfy.Release.Version": "9.9.9",
    "Comfy.Release.Timestamp": 4102444800000,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Validation.Workflows": False,
    "Comfy.UseNewMenu": "Top",
    "Comfy.VueNodes.Enabled": False,
    "Comfy.Minimap.Visible": False,
    "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
    "Comfy.Graph.CanvasInfo": False,
}


# The front ends every web test runs against: the host's bundled one and the newest package
# (installed by scripts/setup_host.sh into .host/, served with --front-end-root).
FRONTENDS = {"bundled": None,
             "fe1.58.1": ROOT / ".host" / "frontend-1.58.1" / "comfyui_frontend_package" / "static"}


@pytest.fixture(scope="session", params=list(FRONTENDS))
def web_server(request, tmp_path_factory):
    """A real ComfyUI server with this pack, its user folder under a fresh temp dir (one per front end)."""
    if not (COMFY_DIR / "main.py").exists():
        pytest.fail("ComfyUI host missing: run `make test-web` (it runs scripts/setup_host.sh first)")
    import json

    root = FRONTENDS[request.param]
    extra = []
    if root is not None:
        if not (root / "index.html").is_file():
            pytest.fail(f"{root} missing: run `bash scripts/setup_host.sh` (installs the front end there)")
        extra = ["--front-end-root", str(root)]
    work = tmp_path_factory.mktemp("comfy-web")
    settings = work / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(UI_SETTINGS))
    # no fixed port: ComfyServer picks a free one and checks that the server answering there is its own
    srv = ComfyServer(workdir=work, extra_args=extra).start()
    srv.frontend = request.param  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def planned():
    """``planned(actions, n, record=None, family="any", selective_enabled=True)``: the actions a run of ``n``
    evenly spaced noise levels uses (procache_core.plan, the run's planner). The preview promises the
    run's schedule, not a step-share remap."""
    from procache_core import presets as core_presets
    from procache_core.plan import even_run_noise, few_step_name, plan_schedule
    from procache_core.schedule import Schedule

    def plan(actions: str, n: int, record=None, family: str = "any", selective_enabled: bool = True) -> str:
        few_name = few_step_name(family, len(actions), n)
        few = None
        if few_name:
            shipped = core_presets.list_presets([core_presets.shipped_presets_dir()])
            few = core_presets.load_preset(shipped[few_name])
        return plan_schedule(Schedule.from_string(actions), record, even_run_noise(n), few=few,
                             selective_enabled=selective_enabled).schedule.to_string()

    return plan


@pytest.fixture(scope="session")
def base_url(web_server) -> str:
    return web_server.base_url


@pytest.fixture(scope="session")
def user_presets(web_server) -> Path:
    return Path(web_server.workdir) / "user" / "procache_presets"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `bash scripts/setup_browser.sh`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("python package playwright missing: run `bash scripts/setup_browser.sh`")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, web_server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    pg = ctx.new_page()
    pg.set_default_timeout(90_000)
    pg.console_messages = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.console_messages.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console_messages.append(f"pageerror: {e}"))
    try:
        yield pg
    finally:
        ctx.close()


@pytest.fixture(scope="session")
def artifacts(web_server) -> Path:
    """tests/artifacts/<front end>/: screenshots and logs kept per front end."""
    d = ARTIFACTS / web_server.frontend
    d.mkdir(parents=True, exist_ok=True)
    return d
