"""Smoke test of the benchmark code paths (`make bench`) on tiny settings: everything runs and the
tables are well formed. No timing is asserted (timings belong to benchmarks/results, not to tests)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HAS_HOST = (ROOT / ".host" / "ComfyUI" / "comfy").is_dir()


def test_metrics_identities():
    from benchmarks import metrics

    x = torch.rand(3, 1, 16, 16) * 2 - 1
    y = x + 0.1 * torch.randn_like(x)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (metrics.ssim(x, y) < 1).all()
    assert torch.isinf(metrics.psnr(x, x)).all()
    assert metrics.rel_l2(x, x).abs().max() == 0
    f = torch.randn(200, 8).numpy()
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(f, f + 1.0) == pytest.approx(8.0, rel=1e-6)


def test_uniform_schedule_matches_fora():
    from benchmarks.quality import uniform_string

    assert uniform_string(50, 17) == "".join("F" if i % 3 == 0 else "C" for i in range(50))
    s = uniform_string(20, 8)
    assert len(s) == 20 and s.count("F") == 8 and s[0] == "F"


def _tiny_quality(tmp_path, thresholds):
    from procache_core.reference_dit import DiT

    from benchmarks.data import FeatureNet
    from benchmarks.quality import run_quality

    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=2,
                num_classes=10, learn_sigma=False, zero_init=False).eval()
    featnet = FeatureNet().eval()
    real = torch.rand(40, 1, 8, 8) * 2 - 1
    return run_quality(quick=True, T=8, budgets=(3, 4), thresholds=thresholds, n_samples=12, n_proxy=4, k=2,
                       chunk=6, model=model, featnet=featnet, real=real, log=lambda *_: None)


def test_quality_bench_tiny(tmp_path):
    thresholds = (0.05, 0.3) if HAS_HOST else ()
    q = _tiny_quality(tmp_path, thresholds)
    methods = [r["method"] for r in q["rows"]]
    assert methods[0] == "full"
    for fam in ("uniform", "procache", "procache+sel"):
        assert methods.count(fam) == 2
    assert methods.count("easycache") == len(thresholds)
    full = q["rows"][0]
    # PSNR is clamped to 100 dB: identical images score exactly 100, anything else less
    assert full["block_eval_fraction"] == 1.0 and full["psnr"] == 100.0 and full["rel_l2"] == 0.0
    for r in q["rows"][1:]:
        if r["block_eval_fraction"] < 1.0:
            assert r["psnr"] < 100.0 and r["rel_l2"] > 0.0, r["label"]
    for r in q["rows"]:
        for key in ("psnr", "ssim", "rel_l2", "fd_real", "fd_full", "label_acc", "block_eval_fraction"):
            assert isinstance(r[key], float) and not math.isnan(r[key]), (r["label"], key)
        assert 0.0 < r["block_eval_fraction"] <= 1.0
    uni3 = next(r for r in q["rows"] if r["method"] == "uniform" and r["budget"] == 3)
    assert uni3["steps_full"] == 3 and uni3["block_eval_fraction"] == pytest.approx(3 / 8)
    assert len(q["verdicts"]) == 4

    from benchmarks.common import machine_info
    from benchmarks.report import plot_quality, write_readme

    plot_quality(q, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 0
    path = write_readme(tmp_path, machine_info("cpu"), "quick", None, q, ["smoke"], "q.png", None, None)
    text = path.read_text()
    assert "| procache+sel B=3 |" in text and "| full |" in text
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| method | steps F/S/C (mean)"))
    n_cols = lines[at].count("|")
    quality_table = []
    for line in lines[at + 2:]:  # the rows of this table (other sections' tables follow it)
        if not line.startswith("|"):
            break
        quality_table.append(line)
    table = [line for line in quality_table if line.startswith("| procache") or line.startswith("| uniform")]
    assert table and all(line.count("|") == n_cols for line in table)


def test_speed_bench_dit_tiny(tmp_path):
    if not HAS_HOST:
        pytest.skip("the host (ComfyUI) is needed for the EasyCache/LazyCache rows: run `make setup`")
    from benchmarks.report import speed_tables
    from benchmarks.speed import dit_case

    res = dit_case(T=6, depth=2, latent=4, batch=1, repeats=1, device="cpu", width=64, heads=4,
                   log=lambda *_: None)
    names = [r["method"] for r in res["rows"]]
    assert names == ["full", "uniform", "easycache", "lazycache", "procache", "procache+sel", "procache+forecast",
                     "procache step+forecast"]
    for r in res["rows"]:
        assert r["median_s"] > 0 and r["wall_speedup"] > 0 and 0 < r["block_eval_fraction"] <= 1
        assert r["ideal_speedup"] >= 1.0
    assert res["rows"][0]["block_eval_fraction"] == 1.0
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["procache+forecast"]["cache_mib"] > rows["procache"]["cache_mib"]   # the differences are kept
    step = rows["procache step+forecast"]
    assert step["steps"] == rows["procache"]["steps"] and step["cache_mib"] < rows["procache"]["cache_mib"]
    assert step["step_median_s"]["C"] < step["step_median_s"]["F"] / 10   # a cached step does not run the model
    table = speed_tables([res])
    assert "| procache+sel |" in table and "wall speed-up" in table and "With forecasting on" in table


def test_speed_bench_medium_subset_tiny(tmp_path):
    """The --medium machinery: a method subset (full always timed), the plan, and its README section."""
    from benchmarks.report import medium_section
    from benchmarks.run import medium_plan
    from benchmarks.speed import dit_case

    plan = medium_plan()
    dit = next(c for c in plan if c["arch"] == "dit")
    assert dit["latent"] == 32 and dit["T"] == 50 and dit["repeats"] >= 3
    assert {"uniform", "procache", "procache+sel"} <= set(dit["methods"])
    res = dit_case(T=6, depth=2, latent=4, batch=1, repeats=1, device="cpu", width=64, heads=4,
                   log=lambda *_: None, methods=("uniform", "procache", "procache+sel"))
    assert [r["method"] for r in res["rows"]] == ["full", "uniform", "procache", "procache+sel"]
    with pytest.raises(ValueError):
        dit_case(T=4, depth=1, latent=4, batch=1, repeats=1, device="cpu", width=32, heads=2,
                 log=lambda *_: None, methods=("nope",))
    text = "\n".join(medium_section([res], None))
    assert "medium CPU setting" in text and "| procache+sel |" in text
