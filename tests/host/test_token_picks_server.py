"""Selective Compute Settings' token-pick options through the REAL server on the trained digits Flux: tie_break
reaches the run (stratified picks other tokens than index order, so the latent differs), a stratified run
repeats bit for bit, and an unknown choice is refused by name while the server keeps running; image_first
reaches the single blocks (the bridge names the prompt's tokens as the text range: the picks, and so the
latent, change) and so does w_value_norm."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import host_digits as hd  # noqa: E402

pytestmark = pytest.mark.host

SEL = {"enabled": True, "depth_fraction": 1.0, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 0.0,
       "w_output_norm": 0.0, "w_spatial": 0.0}


def run(client, prefix: str, tie_break: str, **extra):
    from comfy_client import load_latent

    p = hd.digits_prompt("flux", digits="0123456789", steps=8, prefix=prefix,
                         procache={"actions": "FSCSFSCS", "selective": {**SEL, "tie_break": tie_break, **extra}})
    entry = client.run(p, timeout=600)
    return load_latent(client.output_files(entry, "latents")[0]), hd.stats_text(entry) or ""


def test_tie_break_reaches_the_run_and_repeats(comfy_server):
    index, text = run(comfy_server, "tb_index", "index")
    strat, strat_text = run(comfy_server, "tb_strat", "stratified")
    again, _ = run(comfy_server, "tb_strat2", "stratified")
    assert "selective" in text and "tokens recomputed" in strat_text, strat_text
    assert not torch.equal(index, strat)
    assert torch.equal(strat, again)


def test_unknown_tie_break_is_refused_by_name(comfy_server):
    from comfy_client import PromptError

    with pytest.raises(PromptError) as e:
        run(comfy_server, "tb_bad", "random")
    assert "tie_break" in str(e.value)
    ok, _ = run(comfy_server, "tb_after", "index")
    assert ok.shape[0] == 10


def test_image_first_and_value_norm_reach_the_run(comfy_server):
    seq, _ = run(comfy_server, "if_off", "index", image_first=False)
    first, _ = run(comfy_server, "if_on", "index", image_first=True)
    value, _ = run(comfy_server, "vn_on", "index", image_first=True, w_value_norm=1.0)
    assert not torch.equal(seq, first)    # ties in the single blocks went to the text tokens before
    assert not torch.equal(first, value)
