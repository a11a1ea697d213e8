"""The parsed-preset cache behind the /procache/ routes (nodes/preset_index.py), in process (no server).

A list or preview must answer from the file as it is on disk now: edited in place (even twice within
one clock tick, same size), replaced by a rename, deleted, or added. The cached answer must be the
very bytes an uncached one gives.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _inprocess import load_pack  # noqa: E402


def _preview(data):
    """``/procache/preview``'s answer (nodes/preview.py; the ``mods`` fixture loaded the pack)."""
    return importlib.import_module("procache_pack.nodes.preview").preview_payload(data)


PRESET = "version: 1\nname: {name}\nfamily: pixart\nactions: {actions}\n"


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    load_pack()
    import folder_paths

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path_factory.mktemp("user")))
    payloads = importlib.import_module("procache_pack.nodes.preset_payloads")
    index = importlib.import_module("procache_pack.nodes.preset_index")
    presets = importlib.import_module("procache_pack.procache_core.presets")
    yield payloads, index, presets
    folder_paths.set_user_directory(old)


@pytest.fixture
def udir(mods):
    payloads, _, _ = mods
    d = payloads.preset_files.user_presets_dir()
    for f in d.iterdir():
        f.unlink()
    payloads._INDEX.clear()
    return d


def _uncached_body(payloads) -> str:
    """The list answer computed the slow way: every file parsed now."""
    items = [payloads._list_item(n, p) for n, p in
             sorted(payloads._all_presets().items(), key=lambda kv: (kv[0].startswith("user/"), kv[0]))]
    return json.dumps({"presets": items})


def _user(payloads, name):
    return next(p for p in payloads.list_payload()["presets"] if p["name"] == "user/" + name)


def test_list_is_bitwise_the_uncached_answer_and_parses_once(mods, udir):
    payloads, _, _ = mods
    (udir / "a.yaml").write_text(PRESET.format(name="a", actions="FCCF"))
    (udir / "broken.yaml").write_bytes(b"\xff\xfe binary")
    first = payloads.list_body()
    parses = payloads._INDEX.parses
    assert payloads.list_body() == first == _uncached_body(payloads)
    assert payloads._INDEX.parses == parses, "an unchanged file was parsed again"
    assert "error" in _user(payloads, "broken") and _user(payloads, "a")["actions"] == "FCCF"


def test_edit_in_place_same_size_same_tick_is_seen(mods, udir):
    payloads, _, _ = mods
    f = udir / "p.yaml"
    f.write_text(PRESET.format(name="p", actions="FCCF"))
    assert _user(payloads, "p")["actions"] == "FCCF"
    st = f.stat()
    with open(f, "r+") as fh:  # same size, same inode; then the old timestamps put back
        fh.write(PRESET.format(name="p", actions="FSSF"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size
    assert _user(payloads, "p")["actions"] == "FSSF"
    assert payloads.get_payload("user/p")["yaml"] == f.read_text()
    assert _preview({"preset": "user/p"})["actions"] == "FSSF"
    assert payloads.list_body() == _uncached_body(payloads)


def test_replaced_deleted_and_added_files_are_seen(mods, udir):
    payloads, _, presets = mods
    f = udir / "r.yaml"
    f.write_text(PRESET.format(name="r", actions="FCF"))
    assert _user(payloads, "r")["actions"] == "FCF"
    presets.write_text_atomic(f, PRESET.format(name="r", actions="FCCCF"))  # rename over it
    assert _user(payloads, "r")["actions"] == "FCCCF"
    f.write_text("actions: [unclosed\n")  # broken now: its error, not the old summary
    assert "error" in _user(payloads, "r")
    with pytest.raises(payloads.RouteError) as exc:
        _preview({"preset": "user/r"})
    assert exc.value.status == 400
    f.unlink()
    assert all(p["name"] != "user/r" for p in payloads.list_payload()["presets"])
    (udir / "new.yml").write_text(PRESET.format(name="new", actions="FSF"))
    assert _user(payloads, "new")["actions"] == "FSF"
    assert payloads.list_body() == _uncached_body(payloads)


def test_saved_preset_is_listed_at_once(mods, udir):
    payloads, _, _ = mods
    bodies = [{"name": "s", "actions": a, "family": "pixart", "overwrite": True} for a in ("FCF", "FSSCF", "FCF")]
    bodies += [{"name": "s", "overwrite": True, "yaml": PRESET.format(name=n, actions=a)}
               for n, a in (("s", "FCCF"), ("other-name", "FSF"), ("s", "FCCF"))]
    for body in bodies:
        acts = body.get("actions") or body["yaml"].split("actions: ")[1].strip()
        _, out = payloads.save_payload(body)
        assert out["summary"]["actions"] == acts
        assert _user(payloads, "s") == out["summary"]
        assert _preview({"preset": "user/s"})["actions"] == acts
        assert payloads.list_body() == _uncached_body(payloads)


def test_index_trusts_the_stat_only_once_the_file_has_aged(mods, tmp_path):
    _, index, _ = mods
    now = [0.0]
    idx = index.PresetIndex(clock=lambda: now[0])
    f = tmp_path / "x.yaml"
    f.write_bytes(b"one")
    reads = []

    def read(name, path):
        reads.append(1)
        return Path(path).read_bytes()

    def load(name, path, raw):
        return raw.decode()

    mtime = f.stat().st_ctime_ns / 1e9
    now[0] = mtime + 0.5                   # racy: checked byte for byte on every use
    assert idx.get("x", f, load, read) == "one"
    assert idx.get("x", f, load, read) == "one" and idx.parses == 1
    now[0] = mtime + index.RACY_S + 1      # aged: the stat is enough
    assert idx.get("x", f, load, read) == "one"
    lookups = len(reads)
    assert idx.get("x", f, load, read) == "one" and len(reads) == lookups and idx.parses == 1
    f.write_bytes(b"two")                  # any write changes ctime (and here the size)
    now[0] = f.stat().st_ctime_ns / 1e9 + index.RACY_S + 1
    assert idx.get("x", f, load, read) == "two" and idx.parses == 2
    f.unlink()
    with pytest.raises(FileNotFoundError):
        idx.get("x", f, load, read)


def test_index_compares_bytes_while_the_stat_cannot_tell(mods, tmp_path, monkeypatch):
    """A file system with coarse timestamps: two same-size writes within one tick leave the stat alike."""
    _, index, _ = mods
    monkeypatch.setattr(index, "stat_key", lambda p: (0, 0, Path(p).stat().st_size, 0, 0))
    idx = index.PresetIndex()  # real clock: the key's times (0) are old, so pretend they are new
    monkeypatch.setattr(idx, "_trusted", lambda key: False)
    f = tmp_path / "y.yaml"
    f.write_bytes(b"aaa")
    load = lambda name, path, raw: raw.decode()  # noqa: E731
    read = lambda name, path: Path(path).read_bytes()  # noqa: E731
    assert idx.get("y", f, load, read) == "aaa"
    f.write_bytes(b"bbb")
    assert idx.get("y", f, load, read) == "bbb"
    assert idx.get("y", f, load, read) == "bbb" and idx.parses == 2


def test_list_presets_lists_what_the_glob_listing_did(mods, tmp_path):
    _, _, presets = mods
    d = tmp_path / "user"
    d.mkdir()
    for n in ("b.yaml", "a.yml", "a.yaml", "C.YAML", ".hidden.yaml", "bad name.yaml", "x.txt", "ü.yaml"):
        (d / n).write_text("x")
    (d / "dir.yaml").mkdir()
    (d / "link.yaml").symlink_to(d / "b.yaml")
    (d / "dangling.yaml").symlink_to(d / "missing.yaml")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "s.yaml").write_text("x")
    got = presets.list_presets([shipped, d, tmp_path / "absent"])
    expect: dict[str, Path] = {}
    for i, folder in enumerate([shipped, d]):  # the former listing: two globs, is_file, valid stems
        for f in sorted(list(folder.glob("*.yaml")) + list(folder.glob("*.yml")), key=lambda q: q.name):
            try:
                stem = presets.validate_preset_name(f.stem)
            except Exception:
                continue
            if f.is_file():
                expect.setdefault(stem if i == 0 else "user/" + stem, f)
    assert got == expect
    assert list(got) == list(expect)
