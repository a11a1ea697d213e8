"""`make bench-peers` logic that runs without the peer packs: finding the checkouts (a missing one is one
skip line), the prompt wiring around a peer's node, MagCache's printed ratios, the requirement check, the
documented settings, and the comparison at matched measured CPU speed-up (and at block ratio) on rows and
on a hand-made raw file with known answers."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import peers as bp
from benchmarks import peers_report as pr


def _git_checkout(path: Path, url: str) -> str:
    path.mkdir(parents=True)
    (path / "__init__.py").write_text("")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q"], ["remote", "add", "origin", url], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, env=env)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_missing_peer_folders_are_skipped_with_one_line_each(tmp_path):
    commit = _git_checkout(tmp_path / "Comfy-WaveSpeed", "https://example.invalid/fbcache")
    found, skipped = bp.discover(tmp_path)
    assert [p.name for p, _, _ in found] == ["FBCache"]
    assert found[0][2] == {"url": "https://example.invalid/fbcache", "commit": commit, "dirty": False}
    assert len(skipped) == 2
    assert "skip TeaCache" in skipped[0] and "ComfyUI-TeaCache" in skipped[0] and "\n" not in skipped[0]
    assert "skip MagCache" in skipped[1] and "ComfyUI-MagCache" in skipped[1]
    found, skipped = bp.discover(tmp_path / "nowhere")
    assert found == [] and len(skipped) == len(bp.PEERS)


def test_no_peer_found_runs_nothing_and_keeps_results(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    assert bp.main(["--peers", str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == len(bp.PEERS) + 1 and "nothing to compare" in printed[-1]
    assert list(out.iterdir()) == []
    assert bp.main(["--out", str(out)]) == 0
    assert "no PEERS folder given" in capsys.readouterr().out


def test_peer_node_and_counter_wrap_the_model():
    from benchmarks import host_digits as hd

    plain = hd.digits_prompt("flux", steps=4)
    p = bp.with_counter(bp.with_peer(plain, "MagCache", {"magcache_thresh": 0.1},
                                     [("ProCacheBenchMagRatios", {"ratios": "1,0.9"})]), "tok")
    # loader -> count -> peer -> ratio override -> sampler; report reads the sampler's output
    assert p["count"]["inputs"]["model"] == ["model", 0]
    assert p["peer"]["inputs"]["model"] == ["count", 0]
    assert p["peer_extra0"]["inputs"]["model"] == ["peer", 0]
    assert p["sampler"]["inputs"]["model"] == ["peer_extra0", 0]
    assert p["report"]["inputs"]["samples"] == ["sampler", 0]
    refs = [k for k, n in p.items() if n["inputs"].get("model") == ["model", 0]]
    assert refs == ["count"]
    assert "count" not in plain and plain["sampler"]["inputs"]["model"] == ["model", 0]  # input left alone


def test_mag_ratios_parsed_from_the_last_calibration_print():
    log = "got prompt\nmag_ratios\n[0.5, 0.6]\nmag_ratio_std\n[0.1]\n...\nmag_ratios\n[0.97, 0.91, 1.02]\nmag_ratio_std\n"
    assert bp.parse_mag_ratios(log) == [0.97, 0.91, 1.02]
    assert bp.parse_mag_ratios("Prompt executed in 1 s\n") is None
    bar = "\r 90%|#########  | 18/20 [00:01<00:00]mag_ratios\n[0.97, 0.92]\nmag_ratio_std\n[0.01, 0.02]\n"
    assert bp.parse_mag_ratios(bar) == [0.97, 0.92]


def test_requirement_check_sees_installed_and_missing_packages(tmp_path):
    assert bp._missing(["packaging>=1.0"], tmp_path) == []
    assert bp._missing(["packaging>=999"], tmp_path) == ["packaging>=999"]
    assert bp._missing(["procache-no-such-package-xyz"], tmp_path) == ["procache-no-such-package-xyz"]
    assert bp._missing(['procache-no-such-package-xyz; extra == "test"'], tmp_path) == []


def _row(method, blocks, psnr, fd, label=None, cpu=None, cpu_runs=None):
    """A result row; its measured CPU speed-up is the block ratio unless `cpu` says otherwise."""
    r = {"method": method, "label": label or f"{method} {blocks}", "block_eval_fraction": blocks, "psnr": psnr,
         "fd_full": fd, "cpu_speedup": 1.0 / blocks if cpu is None else cpu}
    if cpu_runs is not None:
        r["cpu_speedup_runs"] = cpu_runs
    return r


CURVE_ROWS = [_row("procache", 0.5, 38.0, 4.0), _row("procache", 0.25, 30.0, 14.0)]  # 2x and 4x


@pytest.mark.parametrize("row, winner", [
    (_row("teacache", 1 / 3, 33.0, 10.0), "procache"),     # at 3x ProCache has 34 dB, FD 9
    (_row("teacache", 1 / 3, 36.0, 5.0), "peer"),
    (_row("teacache", 1 / 3, 36.0, 12.0), None),           # better PSNR, worse FD: no verdict
    (_row("fbcache", 1 / 1.5, 35.0, 6.0), "procache"),     # slower than all ProCache budgets and worse
    (_row("fbcache", 1 / 1.5, 39.0, 3.0), None),           # slower but better: outside the range
    (_row("magcache", 0.2, 31.0, 10.0), "peer"),           # faster than all ProCache budgets and better
])
def test_matched_speedup_verdicts(row, winner):
    m = pr.matched(row, pr.procache_curve(CURVE_ROWS))
    assert m["winner"] == winner
    if abs(m["speedup"] - 3.0) < 1e-9:
        assert m["procache_psnr"] == pytest.approx(34.0) and m["procache_fd_full"] == pytest.approx(9.0)


def test_speedup_at_quality_reads_the_curve():
    curve = pr.procache_curve(CURVE_ROWS)
    assert pr.speedup_at_quality(curve, 34.0) == pytest.approx(3.0)
    assert pr.speedup_at_quality(curve, 20.0) == pytest.approx(4.0)
    assert pr.speedup_at_quality(curve, 40.0) is None
    bumpy_rows = CURVE_ROWS[:1] + [_row("procache", 1 / 3, 30.0, 9.0, "slow-bad"), _row("procache", 0.25, 35.0, 5.0)]
    bumpy = pr.procache_curve(bumpy_rows)
    assert [round(s, 6) for s, _, _ in bumpy] == [2.0, 4.0]      # 3x / 30 dB is beaten by 4x / 35 dB
    assert pr.dominated(bumpy_rows) == {"slow-bad": "procache 0.25"}
    assert pr.speedup_at_quality(bumpy, 34.0) == pytest.approx(4.0)
    assert pr.speedup_at_quality(bumpy, 36.0) == pytest.approx(2 + 2 * 2 / 3)


def test_peer_summary_takes_the_best_row_that_saves_compute():
    rows = CURVE_ROWS + [_row("magcache", 1.0, 100.0, 0.0, "no-op"), _row("magcache", 0.5, 33.0, 8.0, "a"),
                         _row("magcache", 0.2, 31.0, 10.0, "b")]
    s = pr.peer_summary(rows, "magcache")
    assert s["best_label"] == "a" and s["best_speedup"] == pytest.approx(2.0)
    assert s["procache_speedup_at_best"] == pytest.approx(3.25)   # 38 -> 30 dB over 2x -> 4x
    assert s["peer_wins"] == ["b"] and s["procache_wins"] == ["a"]
    assert pr.peer_summary(rows, "teacache") is None
    # a near-lossless setting that hardly saves anything is not the peer's "best quality" for speed
    slight = rows + [_row("magcache", 0.95, 70.0, 0.01, "slight")]
    assert pr.peer_summary(slight, "magcache")["best_label"] == "a"
    assert pr.peer_summary(slight, "magcache", min_speedup=1.0)["best_label"] == "slight"


def test_readme_block_replaced_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# results\n\nbefore\n")
    res = {"families": {}, "peers": {}}
    pr.update_readme(res, readme)
    pr.update_readme(res, readme)
    text = readme.read_text()
    assert text.count(pr.README_START) == 1 and text.startswith("# results\n\nbefore\n")


def test_import_failure_reason_read_from_the_server_log(tmp_path):
    tea = next(p for p in bp.PEERS if p.name == "TeaCache")
    mag = next(p for p in bp.PEERS if p.name == "MagCache")
    found = [(tea, tmp_path / "ComfyUI-TeaCache", {}), (mag, tmp_path / "ComfyUI-MagCache", {})]
    log = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
           "ModuleNotFoundError: No module named 'diffusers'\n"
           f"Cannot import {tmp_path}/ComfyUI-TeaCache module for custom nodes: No module named 'diffusers'\n"
           "sqlite3.ProgrammingError: SQLite objects created in a thread can only be used in that same thread\n")
    # the host prints the traceback before its "Cannot import" line; the reason is on that line
    fails = bp.import_failures(log, found, {"MagCache"})
    assert fails == {"TeaCache": "No module named 'diffusers'"}
    assert bp.import_failures("", found, {"TeaCache"}) == {"MagCache": "its node is not listed by /object_info"}


def test_cases_match_the_in_host_bench_and_img2img_calibrates_apart():
    from benchmarks import host_quality as hq

    assert [c["name"] for c in bp.CASES] == [c["name"] for c in hq.CASES]
    keys = {bp._calibration_key({"sampler": c["sampler"], "scheduler": c["scheduler"], "denoise": c["denoise"]})
            for c in bp.CASES}
    assert len(keys) == len(bp.CASES)  # the img2img case does not overwrite euler/normal's MagCache ratios
    assert bp._calibration_key({"sampler": "euler", "scheduler": "normal", "denoise": 0.6}) == "euler/normal denoise 0.6"


def test_report_regenerates_the_committed_tables_from_raw_json(tmp_path):
    """The report module alone (no server, no peers) rewrites peers_cpu.md from raw/peers_cpu.json as committed."""
    results = Path(bp.__file__).resolve().parent / "results"
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "peers_cpu.json").write_text((results / "raw" / "peers_cpu.json").read_text())
    assert pr.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "peers_cpu.md").read_text() == (results / "peers_cpu.md").read_text()
    assert (tmp_path / "peers_cpu.png").stat().st_size > 0
    assert not (tmp_path / "README.md").exists()   # the README block is the results folder's alone
    assert bp.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "peers_cpu.md").read_text() == (results / "peers_cpu.md").read_text()


# ProCache at block ratios 2x / 4x that measured only 1.5x / 3.0x CPU speed-up
CPU_ROWS = [_row("procache", 0.5, 38.0, 4.0, "pc-a", cpu=1.5), _row("procache", 0.25, 30.0, 14.0, "pc-b", cpu=3.0)]


def test_rows_are_matched_at_measured_cpu_speedup_not_block_ratio():
    # the peer saved 3x in blocks but measured 2.8x CPU; at 2.8x ProCache has 38 - 8 * 1.3 / 1.5 = 31.07 dB and
    # FD-full 4 + 10 * 1.3 / 1.5 = 12.67, both worse than the peer's 31.5 / 12; at block ratio 3x ProCache
    # (34 dB / 9) wins
    peer = _row("magcache", 1 / 3, 31.5, 12.0, "m", cpu=2.8)
    m = pr.matched(peer, pr.procache_curve(CPU_ROWS))
    assert m["winner"] == "peer" and m["speedup"] == pytest.approx(2.8)
    assert m["procache_psnr"] == pytest.approx(38 - 8 * 1.3 / 1.5)
    assert m["procache_fd_full"] == pytest.approx(4 + 10 * 1.3 / 1.5)
    mb = pr.matched(peer, pr.procache_curve(CPU_ROWS, "blocks"), "blocks")
    assert mb["winner"] == "procache" and mb["procache_psnr"] == pytest.approx(34.0)
    s = pr.peer_summary(CPU_ROWS + [peer], "magcache")
    assert s["peer_wins"] == ["m"] and s["best_speedup"] == pytest.approx(2.8)
    assert s["procache_speedup_at_best"] == pytest.approx(1.5 + 1.5 * 6.5 / 8)   # 31.5 dB on the CPU curve
    with pytest.raises(ValueError, match="basis"):
        pr.speedup(peer, "flops")


def test_verdict_flagged_when_it_flips_within_the_cpu_spread():
    wide = _row("magcache", 1 / 3, 31.5, 12.0, "w", cpu=2.8, cpu_runs=[2.5, 2.8, 3.0])   # at 2.5x ProCache wins
    tight = _row("magcache", 1 / 3, 31.5, 12.0, "t", cpu=2.8, cpu_runs=[2.75, 2.8, 2.85])
    curve = pr.procache_curve(CPU_ROWS)
    assert pr.matched(wide, curve)["winner"] == "peer" and pr.matched(wide, curve)["holds"] is False
    assert pr.matched(tight, curve)["holds"] is True
    assert pr.spread(wide, "cpu_speedup") == (2.5, 3.0) and pr.spread(CPU_ROWS[0], "cpu_speedup") is None


def test_a_setting_that_skips_nothing_gets_no_verdict_whatever_its_timing():
    noop = _row("teacache", 1.0, 100.0, 0.0, "noop", cpu=2.0)   # full compute that happened to time fast
    m = pr.matched(noop, pr.procache_curve(CPU_ROWS))
    assert m["winner"] is None and m["note"].startswith("skips nothing")
    assert pr.matched(_row("teacache", 0.5, 30.0, 9.0, cpu=float("nan")), pr.procache_curve(CPU_ROWS))["note"] == "not timed"


def test_documented_setting_is_run_besides_the_sweep_once():
    p = bp.Peer("X", "x", "X", "k", [{"k": 1}, {"k": 2}], {"flux": None}, documented={"flux": {"k": 3, "r": 0.1}})
    assert p.settings("flux") == [{"k": 1}, {"k": 2}, {"k": 3, "r": 0.1}]
    assert p.is_documented("flux", {"k": 3, "r": 0.1}) and not p.is_documented("flux", {"k": 3})
    p.documented = {"flux": {"k": 2}}
    assert p.settings("flux") == [{"k": 1}, {"k": 2}]     # already in the sweep: run once, marked there
    assert p.settings("pixart") == p.sweep
    mag = next(q for q in bp.PEERS if q.name == "MagCache")
    # the documented retention_ratio overrides the sweep's fixed 0.2 in the node's inputs
    assert mag.inputs("flux", mag.documented["flux"])["retention_ratio"] == 0.1
    assert all(q.documented.get("flux") in q.settings("flux") for q in bp.PEERS)


def _raw() -> dict:
    """A one-case raw result with hand-computed answers (see the test below)."""
    full = {"method": "full", "label": "full", "block_eval_fraction": 1.0, "psnr": 100.0, "ssim": 1.0,
            "fd_full": 0.0, "fd_real": 50.0, "label_acc": 1.0, "wall_speedup": 1.0, "cpu_speedup": 1.0}

    def row(method, label, blocks, psnr, fd, cpu_runs, **kw):
        return {"method": method, "label": label, "block_eval_fraction": blocks, "psnr": psnr, "ssim": 0.9,
                "fd_full": fd, "fd_real": 60.0, "label_acc": 1.0, "cpu_speedup": sorted(cpu_runs)[1],
                "cpu_speedup_runs": cpu_runs, "wall_speedup": sorted(cpu_runs)[1] * 0.9,
                "wall_speedup_runs": [c * 0.9 for c in cpu_runs], **kw}

    rows = [full,
            row("procache", "pc slow", 0.5, 38.0, 4.0, [1.4, 1.5, 1.6]),
            row("procache", "pc fast", 0.25, 30.0, 14.0, [2.9, 3.0, 3.1]),
            # at CPU 2.25x ProCache has 34 dB / FD 9: worse on both -> peer
            row("magcache", "mag doc (documented setting)", 0.4, 35.0, 8.0, [2.2, 2.25, 2.3], documented=True),
            # at CPU 1.5x ProCache has 38 dB / FD 4 -> ProCache
            row("magcache", "mag low", 0.6, 33.0, 10.0, [1.45, 1.5, 1.55]),
            # skips nothing: no verdict
            row("teacache", "tea noop", 1.0, 100.0, 0.0, [1.1, 1.2, 1.3])]
    return {"steps": 4, "cfg": 3.0, "n_samples": 10, "timing_runs": 3, "paired": True, "skipped": [],
            "peers": {}, "seconds": 1.0, "commit": "abc123", "date": "2026-01-01",
            "families": {"flux": {"cases": [{"name": "euler/normal", "rows": rows}], "mag_ratios": None}}}


def test_table_rebuilt_from_a_hand_made_raw_file_gives_the_known_answer(tmp_path):
    (tmp_path / "raw").mkdir()
    import json

    (tmp_path / "raw" / "peers_cpu.json").write_text(json.dumps(_raw()))
    assert pr.main(["--out", str(tmp_path)]) == 0
    text = (tmp_path / "peers_cpu.md").read_text()
    assert "at commit `abc123` on 2026-01-01" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| mag doc (documented setting) |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "2.50" and cells[3] == "2.25 (2.20-2.30)"          # block ratio, CPU with its spread
    # at CPU 2.25x ProCache has 34 dB / 9 (peer better); at block ratio 2.5x it has 36 dB / 6.5 (ProCache better)
    assert cells[10] == "peer (34.00 dB / 9.000)" and cells[11] == "ProCache"
    low = [c.strip() for c in next(ln for ln in text.splitlines() if ln.startswith("| mag low |")).strip("|").split("|")]
    assert low[10] == "ProCache (38.00 dB / 4.000)"
    noop = [c.strip() for c in next(ln for ln in text.splitlines() if ln.startswith("| tea noop |")).strip("|").split("|")]
    assert noop[10] == "n/a (skips nothing (full compute))"
    assert "ProCache better on PSNR and FD-full in 1, the peer in 1**, no verdict in 1 (1 skips nothing)" in text
    # median CPU / block ratio: ProCache 1.5 / 2 and 3 / 4; MagCache 2.25 / 2.5 and 1.5 / 1.667 (the no-op left out)
    assert "procache 0.75, magcache 0.90." in text
    assert "At matched block ratio (not a time) the same rows give 2 / 0." in text
    summary = next(ln for ln in text.splitlines() if ln.startswith("| flux | euler/normal | magcache |"))
    assert "35.00 dB / 8.000 at CPU 2.25x: peer better, ProCache 34.00 dB / 9.000 there" in summary
    assert "1 / 1 / 0 of 2" in summary and summary.rstrip(" |").endswith("mag doc (documented setting)")
    block = pr.readme_block(_raw())
    assert "**mag doc (documented setting)** (35.00 dB, FD-full 8.000 at CPU 2.25x) beats ProCache there" in block


def test_cpu_efficiency_splits_procache_by_reuse_mode_when_both_ran():
    from benchmarks.peers_report import cpu_efficiency

    def row(method, label, blocks, cpu):
        return {"method": method, "label": label, "block_eval_fraction": blocks, "cpu_speedup": cpu, "psnr": 30.0}

    rows = [row("procache", "procache flux-28-fast", 0.25, 3.0),                 # 3 / 4 = 0.75
            row("procache", "procache flux-28-fast step+forecast", 0.25, 3.8),   # 0.95
            row("magcache", "magcache 0.24", 0.5, 1.8)]                          # 0.90
    eff = cpu_efficiency({"families": {"flux": {"cases": [{"rows": rows}]}}})
    assert eff["procache (block reuse)"] == 0.75 and abs(eff["procache (step reuse)"] - 0.95) < 1e-12
    assert abs(eff["procache"] - 0.85) < 1e-12 and abs(eff["magcache"] - 0.9) < 1e-12
    only_blocks = cpu_efficiency({"families": {"flux": {"cases": [{"rows": rows[:1]}]}}})
    assert set(only_blocks) == {"procache"}


def test_row_timings_keep_each_rows_runs_after_its_entry_is_gone():
    """Rows are keyed by a sequence number: a row's history entry is freed once the row is built, and a
    later entry can take its id(), which once gave one row another row's times."""
    import gc

    t = bp.RowTimings()
    keys = []
    for i in range(50):
        entry = {"n": i}                       # a fresh object per row, dropped right after, as in the bench
        keys.append(t.add([1.0 + i], [2.0 + i], walls=[3.0 + i], cpus=[4.0 + i]))
        entry["key"] = keys[-1]
        del entry
        gc.collect()
    assert keys == list(range(50))
    for i, k in enumerate(keys):
        assert t.runs(k) == ([1.0 + i], [2.0 + i])
        assert t.cpu(k) == 2.0 + i
        assert t.pairs(k) == ((3.0 + i, 4.0 + i), ([3.0 + i], [4.0 + i]))
    assert t.pairs(t.add([1.0], [1.0])) is None   # unpaired timing has no ratios
