"""Forecasting reused steps through the REAL server, on the trained digits models (the host's own Flux and
PixArt-alpha classes): Selective Compute Settings' ``forecast`` input reaches the run, Stats and the log say
which order ran and what its history held, the cache estimate counts that history exactly, an all-full
schedule with forecasting is full compute bit for bit, a forecast run repeats bit for bit, and on the
euler/normal uniform-reuse case (benchmarks/results/forecast_cpu.md) forecasting lands closer to full
compute than copying."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import host_digits as hd  # noqa: E402

pytestmark = pytest.mark.host

UNIFORM = "FCCCCFCCCCFCCCCFCCCC"


def settings(forecast: str) -> dict:
    return {"enabled": False, "depth_fraction": 1.0, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 0.0,
            "w_output_norm": 0.0, "w_spatial": 0.0, "forecast": forecast}


def run(client, family: str, prefix: str, actions: str | None, forecast: str | None, seed: int = 7):
    from comfy_client import load_latent

    pc = None if actions is None else {"actions": actions, **({"selective": settings(forecast)} if forecast else {})}
    p = hd.digits_prompt(family, digits="0123456789", repeat=1, steps=len(actions or UNIFORM), sampler="euler",
                         scheduler="normal", seed=seed, prefix=prefix, procache=pc)
    entry = client.run(p, timeout=900)
    lat = load_latent(client.output_files(entry, "latents")[0])
    return lat, hd.stats_text(entry) or ""


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((x.double() - ref.double()) ** 2).mean())
    peak = float(ref.double().abs().max())
    return 10.0 * torch.log10(torch.tensor(peak * peak / max(mse, 1e-30))).item()


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_forecast_reaches_the_run_and_is_counted(comfy_server, family):
    srv = comfy_server.server
    before = len(srv.log())
    full, _ = run(comfy_server, family, f"fcfull_{family}", None, None)
    all_full, af_text = run(comfy_server, family, f"fcff_{family}", "F" * len(UNIFORM), "full (order 2)")
    assert torch.equal(all_full, full), "an all-full schedule with forecasting must be full compute"
    assert "forecast full (order 2)" in af_text, af_text
    light, text = run(comfy_server, family, f"fcl_{family}", UNIFORM, "light (order 1)")
    again, _ = run(comfy_server, family, f"fcl2_{family}", UNIFORM, "light (order 1)")
    assert torch.equal(light, again), "a forecast run must repeat bit for bit"
    copy, copy_text = run(comfy_server, family, f"fcc_{family}", UNIFORM, "off (copy)")
    assert "forecast" not in copy_text, copy_text
    assert not torch.equal(light, copy)
    m = re.search(r"forecast light \(order 1\), history ([\d.]+) MiB", text)
    assert m and float(m.group(1)) > 0, text
    peak = float(re.search(r"cache peak ([\d.]+) MiB", text).group(1))
    copy_peak = float(re.search(r"cache peak ([\d.]+) MiB", copy_text).group(1))
    # order 1 keeps one difference per cached output: the history is the copy cache's outputs again
    assert peak > copy_peak and abs(peak - copy_peak - float(m.group(1))) < 0.15, (text, copy_text)
    log = srv.log()[before:]
    est = re.findall(r"ProCache: cache estimate ([\d.]+) MiB full", log)
    assert est and float(est[-1]) == float(re.search(r"cache peak ([\d.]+) MiB",
                                                     copy_text).group(1)), (est, copy_text)
    assert any(float(e) == peak for e in est), (est, text)
    if family == "flux":  # the measured case where forecasting wins clearly (+4-6 dB on the bench)
        assert psnr(light, full) > psnr(copy, full) + 1.0, (psnr(light, full), psnr(copy, full))


def test_a_bad_forecast_choice_is_refused_by_name(comfy_server):
    from comfy_client import PromptError

    p = hd.digits_prompt("flux", digits="0", steps=4, prefix="fcbad",
                         procache={"actions": "FCCC", "selective": settings("order 3")})
    with pytest.raises(PromptError) as e:
        comfy_server.run(p, timeout=300)
    assert "forecast" in str(e.value)
    ok, _ = run(comfy_server, "flux", "fcafter", "FCFC", "light (order 1)")  # the server keeps running
    assert ok.shape[0] == 10
