"""Fuzzing every /procache/ route of the real server with hypothesis (nodes/routes.py).

Property, for every request: the answer is 2xx, or 4xx with a JSON body ``{"error": "ProCache: ...",
"field": ...}``; never 5xx, never a Python traceback, never an absolute server path; the server
answers the next request; no file appears or changes outside ``<user dir>/procache_presets/`` and no
temporary file is left behind in it. Preset files with hostile content (random bytes, deep nesting,
alias bombs, huge numbers, wrong types) are placed straight into the user folder, as a user editing
by hand or another program would.

Bounded: a fixed number of examples per test and no shrinking past a few seconds; the whole module
takes well under a minute against a warm server.
"""
from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from comfy_client import COMFY_DIR

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("PROCACHE_FUZZ_EXAMPLES", 25))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large],
                phases=[Phase.explicit, Phase.generate, Phase.target])
KEYS = ["name", "yaml", "actions", "family", "model", "selective", "overwrite", "steps", "text", "preset",
        "start_percent", "end_percent"]

# -- strategies -----------------------------------------------------------------------------------
json_scalar = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_value = st.recursive(json_scalar, lambda kids: st.lists(kids, max_size=4)
                          | st.dictionaries(st.text(max_size=12), kids, max_size=4), max_leaves=12)
schedule_text = st.text(alphabet="FCSfcsX ,|_-\n:0", max_size=60)
nasty_name = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="ab./\\%:\x00 \u202e\u2028", max_size=20),
    st.sampled_from(["..", ".", "../x", "user/../../etc/passwd", "%2e%2e%2fx", "x" * 5000, "CON", "a" * 64,
                     "user/", "user/user/x", "\ud7ff", "名前", "fast-dit", "user/fz-0"]),
)
# bodies: a known key set with any JSON values, or anything at all
body = st.one_of(st.dictionaries(st.sampled_from(KEYS), json_value | schedule_text | nasty_name, max_size=6),
                 json_value)
query = st.dictionaries(st.sampled_from(KEYS + ["x", ""]), st.text(max_size=30) | schedule_text, max_size=5)


def _deep(n: int, kind: str) -> str:
    return {"list": "actions: " + "[" * n + "]" * n, "map": "provenance: " + "{a: " * n + "1" + "}" * n,
            "block": "".join("  " * i + "a:\n" for i in range(n)) + "  " * n + "b"}[kind]


BOMB = ("version: 1\nname: bomb\nactions: FCCF\n" + "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
                  for i in range(1, 12)))
BOMB_IN_FIELD = ("version: 1\nname: bomb2\nactions: FCCF\nselective: &s {weights: &w [&l [1, 2], *l, *l]}\n"
                 "provenance: {notes: *w}\n")
hostile_text = st.sampled_from([
    BOMB, BOMB_IN_FIELD, BOMB.replace("a0", "actions", 1) + "\n",
    _deep(3000, "list"), _deep(3000, "map"), _deep(300, "block"),
    "version: 1\nname: huge\nactions: FCCF\nselective: {ratio: 1e999}\n",
    "version: 1\nname: huge\nactions: FCCF\nselective: {ratio: 0.3, depth_fraction: .nan}\n",
    "version: 1\nname: huge\nactions: FCCF\nsteps: 123456789012345678901234567890\n",
    "version: 99999999999999999999999\nname: v\nactions: FCCF\n",
    "version: 1\nname: wrong\nactions: {F: C}\n", "version: 1\nname: wrong\nactions: 12\n",
    "version: 1\nname: wrong\nactions: [[F]]\n", "version: 1\nname: [1]\nactions: FC\n",
    "version: 1\nname: wrong\nactions: FC\nselective: [1, 2]\n",
    "version: 1\nname: wrong\nactions: FC\nselective: {start_block: 10000000000000000000000}\n",
    "version: 1\nname: wrong\nactions: FC\nprovenance: {date: 2025-13-45}\n",
    "version: 1\nname: wrong\nactions: !!python/object:os.system x\n",
    "version: 1\nname: t\nactions: " + "F" * 200_000 + "\n",
    "version: 1\nname: ok\nactions: " + "FC" * 600 + "\n",
    "\ufeffversion: 1\nname: bom\nactions: FCCF\n", "---\n...\n---\n", "", "\x00\x01\x02",
    "version: 1\r\nname: crlf\r\nactions: FCSF\r\n",
])
preset_file = st.one_of(st.binary(max_size=400), hostile_text.map(str.encode),
                        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                        st.binary(min_size=1, max_size=40).map(lambda b: b"version: 1\nname: x\nactions: FC" + b))


# -- property checks ------------------------------------------------------------------------------
class Checker:
    """Asserts the property on each answer, and that nothing outside the presets folder changed."""

    def __init__(self, base_url: str, workdir: Path, presets: Path) -> None:
        self.base_url, self.workdir, self.presets = base_url, workdir, presets
        self.secrets = {str(p) for p in (workdir, workdir.resolve(), ROOT, ROOT.resolve(), COMFY_DIR,
                                         COMFY_DIR.resolve(), Path(tempfile.gettempdir()) / "pytest-of-")}
        self.before = self.outside()

    def outside(self) -> dict[str, int]:
        out = {}
        for base in (self.workdir, ROOT / "schedules"):
            for p in base.rglob("*"):
                if p.is_file() and self.presets not in p.parents and p.name != "server.log":
                    # the host rewrites its own settings file when it likes: only its presence counts
                    host_owned = (self.workdir / "user" / "default") in p.parents
                    out[str(p)] = 0 if host_owned else p.stat().st_mtime_ns
        return out

    def check(self, r: requests.Response, what: object) -> dict:
        assert r.status_code < 500, (what, r.status_code, r.text[:500])
        text = r.text
        assert "Traceback" not in text and 'File "' not in text, (what, text[:500])
        for s in self.secrets:
            assert s not in text, f"{what}: answer quotes a server path ({s}): {text[:500]}"
        data = r.json()
        if r.status_code >= 400:
            assert isinstance(data, dict) and isinstance(data.get("error"), str), (what, data)
            assert data["error"].startswith("ProCache:"), (what, data)
            assert isinstance(data.get("field"), str) and data["field"], (what, data)
        return data

    def after(self, what: object) -> None:
        r = requests.get(self.base_url + "/procache/presets", timeout=30)
        assert r.status_code == 200, (what, r.text[:300])
        self.check(r, what)
        assert self.outside() == self.before, f"{what}: files changed outside the presets folder"
        if self.presets.is_dir():
            tmp = [p.name for p in self.presets.iterdir() if p.name.startswith(".tmp")]
            assert not tmp, f"{what}: left {tmp}"


@pytest.fixture(scope="module")
def checker(web_server, user_presets):
    requests.get(web_server.base_url + "/procache/presets", timeout=60)  # creates the user folder
    return Checker(web_server.base_url, Path(web_server.workdir), user_presets)


def _get(checker: Checker, path: str, **kw) -> requests.Response:
    return requests.get(checker.base_url + path, timeout=30, **kw)


def _post(checker: Checker, path: str, **kw) -> requests.Response:
    return requests.post(checker.base_url + path, timeout=30, **kw)


# -- the routes -------------------------------------------------------------------------------------
@FUZZ
@given(data=body)
def test_fuzz_save_bodies(checker, data):
    r = _post(checker, "/procache/presets", json=data)
    got = checker.check(r, data)
    if r.status_code in (200, 201):  # accepted: it is in the folder, listed, and loads back
        name = got["name"]
        assert (checker.presets / got["file"]).is_file()
        assert _get(checker, "/procache/presets/" + urllib.parse.quote(name)).status_code == 200
        (checker.presets / got["file"]).unlink()
    checker.after(data)


@FUZZ
@given(data=body, raw=st.binary(max_size=200), ctype=st.sampled_from(["application/json", "text/plain", ""]))
def test_fuzz_raw_bodies(checker, data, raw, ctype):
    for path in ("/procache/presets", "/procache/preview"):
        blob = raw if raw else json.dumps(data).encode()
        r = _post(checker, path, data=blob, headers={"Content-Type": ctype} if ctype else {})
        got = checker.check(r, (path, blob[:80]))
        if r.status_code in (200, 201) and path == "/procache/presets":
            (checker.presets / got["file"]).unlink()
    checker.after(raw[:80])


@FUZZ
@given(data=body)
def test_fuzz_preview_post(checker, data):
    checker.check(_post(checker, "/procache/preview", json=data), data)
    checker.after(data)


@FUZZ
@given(q=query)
def test_fuzz_preview_query(checker, q):
    checker.check(_get(checker, "/procache/preview", params=q), q)
    # the same as a hand-written query string (no escaping of what the client sent)
    raw = "&".join(f"{k}={v}" for k, v in q.items() if "#" not in k + v)
    checker.check(_get(checker, "/procache/preview?" + raw.replace(" ", "%20")), raw)
    checker.after(q)


@FUZZ
@given(name=nasty_name, encode=st.sampled_from(["quote", "quote_all", "double", "raw"]))
def test_fuzz_get_names(checker, name, encode):
    path = {"quote": urllib.parse.quote(name, safe="/"), "quote_all": urllib.parse.quote(name, safe=""),
            "double": urllib.parse.quote(urllib.parse.quote(name, safe=""), safe=""),
            "raw": "".join(c if c.isprintable() and c not in "?# " else urllib.parse.quote(c) for c in name)}[encode]
    if not path:
        return
    r = _get(checker, "/procache/presets/" + path)
    if not urllib.parse.urlsplit(r.url).path.startswith("/procache/presets/"):
        return  # the client resolved dot segments away: the request never reached the route
    checker.check(r, (name, encode))
    assert r.status_code in (200, 404, 422), (name, r.status_code)
    checker.after(name)


@FUZZ
@given(name=nasty_name, actions=schedule_text, overwrite=st.booleans())
def test_fuzz_save_names(checker, name, actions, overwrite):
    r = _post(checker, "/procache/presets", json={"name": name, "actions": actions or "F", "overwrite": overwrite})
    got = checker.check(r, name)
    if r.status_code in (200, 201):
        f = checker.presets / got["file"]
        assert f.parent == checker.presets and f.is_file()
        f.unlink()
    checker.after(name)


@settings(FUZZ, max_examples=EXAMPLES * 2)
@given(content=preset_file, stem=st.sampled_from(["fz-0", "fz.1", "fz_2", "fz-0.yml"]))
def test_fuzz_preset_files_in_the_user_folder(checker, content, stem):
    """A hostile file in the folder: listing, reading and previewing it answer cleanly."""
    fname = stem if stem.endswith(".yml") else stem + ".yaml"
    listed = "user/" + fname.rsplit(".", 1)[0]
    f = checker.presets / fname
    f.write_bytes(content)
    try:
        r = _get(checker, "/procache/presets")
        items = {p["name"]: p for p in checker.check(r, content[:80])["presets"]}
        assert listed in items, (listed, list(items))
        entry = items[listed]
        assert ("error" in entry) != ("actions" in entry), entry
        if "error" in entry:
            assert entry["error"].startswith("ProCache:"), entry
        r = _get(checker, "/procache/presets/" + listed)
        got = checker.check(r, content[:80])
        assert r.status_code in (200, 422), (r.status_code, got)
        assert (r.status_code == 200) == ("error" not in entry), (entry, got)
        checker.check(_post(checker, "/procache/preview", json={"preset": listed, "steps": 7}), content[:80])
        checker.check(_get(checker, "/procache/preview", params={"preset": listed}), content[:80])
        # saving over it (the UI's "save with overwrite") replaces it whatever it held
        r = _post(checker, "/procache/presets", json={"name": listed, "actions": "FCSF", "overwrite": True})
        checker.check(r, content[:80])
        assert r.status_code == 200, r.text
        assert _get(checker, "/procache/presets/" + listed).json()["actions"] == "FCSF"
        assert not (f.with_suffix(".yaml" if f.suffix == ".yml" else ".yml")).exists(), "saving added a twin file"
    finally:
        f.unlink(missing_ok=True)
    checker.after(content[:80])


def test_binary_preset_is_a_422_naming_the_file_not_a_500(checker):
    f = checker.presets / "binary.yaml"
    f.write_bytes(b"\xff\xfe\x00bin\x80\x81")
    try:
        r = _get(checker, "/procache/presets/user/binary")
        body = checker.check(r, "binary")
        assert r.status_code == 422 and body["field"] == "preset" and "UTF-8" in body["error"], body
        assert "user/binary" in body["error"]
    finally:
        f.unlink()


def test_refusals_never_quote_the_server_folder(checker):
    f = checker.presets / "broken.yaml"
    f.write_text("version: 1\nname: broken\nactions: CCF\n")
    try:
        for r in (_get(checker, "/procache/presets/user/broken"), _get(checker, "/procache/presets"),
                  _post(checker, "/procache/preview", json={"preset": "user/broken"})):
            checker.check(r, "broken")
            assert "user/broken" in r.text and "line 3" in r.text, r.text
    finally:
        f.unlink()


def test_load_benchmark_traffic_smoke(checker):
    """The client pool of benchmarks/load.py against the idle server for two seconds: every kind of the
    UI's requests served, no errors (the benchmark itself, with sampling, is `make bench-load`)."""
    import sys
    import threading

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.load import run_traffic, summarize_traffic

    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)
    timer.start()
    summary = summarize_traffic(run_traffic(checker.base_url, 10.0, stop, workers=2))
    assert summary["errors"] == 0, summary["error_samples"]
    assert all(summary[k]["n"] > 0 for k in ("list", "preview", "save")), summary
    # every answer says how long its handler took (Server-Timing), which the benchmark splits the time by
    assert all(summary[k]["handler_p50_ms"] is not None and summary[k]["cpu_p50_ms"] is not None
               for k in ("list", "preview", "save")), summary
    for f in checker.presets.glob("load-ui-*.yaml"):
        f.unlink()
    checker.after("load smoke")


def test_server_froze_its_startup_heap(web_server):
    """The pack's start-up hook ran in the real server: the collector no longer walks the start-up heap
    (nodes/gc_freeze.py; why in benchmarks/results/load_cpu.md)."""
    import re

    found = re.findall(r"ProCache: (\d+) start-up objects moved out of the cyclic garbage collector", web_server.log())
    assert found and int(found[-1]) > 100_000, web_server.log()[-3000:]
