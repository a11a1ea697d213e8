"""Through the REAL server: selective steps recompute tokens in every family, caches never go stale
when the host splits and re-batches cond/uncond, and ProCache composes with another pack's block patch.

Test-only nodes: tests/host_nodes/nodes_selective_probes.py (tiny SD3/Wan builders, row counters, an offset
block patch, low-memory batch splitting through the host's own memory check).
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from comfy_client import load_latent
from workflows import PIXART_ALPHA, add_procache

# family -> (model node, conditioning dims (tokens dim, pooled), latent node, deep module paths)
FAMILIES = {
    "pixart": ({"class_type": "UNETLoader", "inputs": {"unet_name": PIXART_ALPHA, "weight_dtype": "default"}},
               (4096, 0), {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
               "diffusion_model.blocks.3.mlp,diffusion_model.blocks.3.cross_attn"),
    "flux": ({"class_type": "ProCacheTestTinyFlux",
              "inputs": {"seed": 5, "depth": 2, "depth_single_blocks": 2, "context_in_dim": 64}},
             (64, 768), {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
             "diffusion_model.single_blocks.1.linear2"),
    "sd3": ({"class_type": "ProCacheTestTinySD3", "inputs": {"seed": 6}},
            (4096, 2048), {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
            "diffusion_model.joint_blocks.1.x_block.mlp"),
    "wan": ({"class_type": "ProCacheTestTinyWan", "inputs": {"seed": 7}},
            (4096, 0), {"class_type": "EmptyHunyuanLatentVideo",
                        "inputs": {"width": 128, "height": 128, "length": 1, "batch_size": 1}},
            "diffusion_model.blocks.3.ffn,diffusion_model.blocks.3.cross_attn"),
}


def prompt(family: str, prefix: str, *, actions: str | None = None, selective: dict | None = None,
           before: list[dict] = (), after: list[dict] = (), cfg: float = 2.0, count: str | None = None) -> dict:
    """model -> [before nodes] -> [ProCache] -> [after nodes] -> KSampler -> SaveLatent (+ stats, counts)."""
    model_node, (dim, pooled), latent, _ = FAMILIES[family]
    p: dict = {
        "model": model_node,
        "pos": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 1, "tokens": 8, "dim": dim, "pooled_dim": pooled, "scale": 1.0}},
        "neg": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 2, "tokens": 8, "dim": dim, "pooled_dim": pooled, "scale": 1.0}},
        "latent": latent,
    }
    last = "model"
    for i, node in enumerate(before):
        p[f"b{i}"] = {"class_type": node["class_type"], "inputs": {"model": [last, 0], **node["inputs"]}}
        last = f"b{i}"
    if actions is not None:
        spec = {"actions": actions}
        if selective is not None:
            spec["selective"] = selective
        add_procache(p, last, spec)
        last = "apply"
    for i, node in enumerate(after):
        p[f"a{i}"] = {"class_type": node["class_type"], "inputs": {"model": [last, 0], **node["inputs"]}}
        last = f"a{i}"
    steps = len(actions) if actions else 4
    p["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": [last, 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": 0, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}}
    if actions is not None:
        p["stats"] = {"class_type": "ProCacheStats", "inputs": {"samples": ["sampler", 0], "model": ["apply", 0]}}
    if count is not None:
        p["counts"] = {"class_type": "ProCacheTestRowCounts", "inputs": {"samples": ["sampler", 0], "label": count}}
    return p


def _texts(entry) -> list[str]:
    return [str(t) for o in entry["outputs"].values() for t in (o.get("text") or [])]


def run(client, p) -> tuple[torch.Tensor, str, list]:
    entry = client.run(p, timeout=900)
    files = client.output_files(entry, "latents")
    assert len(files) == 1, entry.get("outputs")
    texts = _texts(entry)
    stats = next((t for t in texts if t.startswith("ProCache [")), "")
    rows = next((json.loads(t[5:]) for t in texts if t.startswith("ROWS ")), [])
    return load_latent(files[0]), stats, rows


SEL = {"enabled": True, "depth_fraction": 0.25, "ratio": 0.25, "w_staleness": 1.0, "w_input_change": 1.0,
       "w_output_norm": 0.25, "w_spatial": 0.5}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_selective_step_recomputes_chosen_tokens_in_deep_blocks(comfy_server, family):
    """FSC: the deep token-local modules see every token on F, a quarter of them on S, nothing on C;
    and the output differs from the same schedule with the S step run as C."""
    paths = FAMILIES[family][3]
    counter = {"class_type": "ProCacheTestRowCounter", "inputs": {"label": f"rows_{family}", "paths": paths}}
    # The first FULL step of a model class in this server process also runs the host's own blocks once, to
    # verify the adapter (nodes/adapters/verify.py): a warm-up run takes that call, so the counts below are
    # the schedule's alone, and a second verification (it must happen once per process) would show here.
    _, _, warm_rows = run(comfy_server, prompt(family, f"warm_{family}", actions="F", before=[counter],
                                               count=f"rows_{family}"))
    assert 1 <= len([r for r in warm_rows if r[0] == paths.split(",")[0]]) <= 2, warm_rows
    sel_lat, stats, rows = run(comfy_server, prompt(family, f"sel_{family}", actions="FSC", selective=SEL,
                                                    before=[counter], count=f"rows_{family}"))
    print(family, stats, rows)
    assert "(1 full / 1 selective / 1 cached)" in stats, stats
    tokens = re.search(r"(\d+) tokens recomputed", stats)
    assert tokens and int(tokens.group(1)) > 0, stats
    for path in paths.split(","):
        seen = [r for r in rows if r[0] == path]
        assert len(seen) == 2, (path, rows)             # F and S steps only (cond+uncond in one batch)
        (_, b_f, n_full), (_, b_s, n_sel) = seen
        assert b_f == b_s == 2
        assert n_sel == -(-n_full // 4) and 0 < n_sel < n_full, (path, seen)
    # the same schedule with selective compute off: the S step runs as C
    off = {**SEL, "enabled": False}
    cached_lat, stats_c, rows_c = run(comfy_server, prompt(family, f"cac_{family}", actions="FSC", selective=off,
                                                           before=[counter], count=f"rows_{family}"))
    assert "(1 full / 0 selective / 2 cached)" in stats_c, stats_c
    assert len([r for r in rows_c if r[0] == paths.split(",")[0]]) == 1, rows_c
    assert torch.isfinite(sel_lat).all()
    assert not torch.equal(sel_lat, cached_lat)


def test_split_then_batched_cond_uncond_recomputes_instead_of_reusing_stale_cache(comfy_server):
    """The host runs step 2 (FULL) as two calls (low memory) and batches cond+uncond again on step 3
    (cached): that batched stream was last computed on step 0, so step 3 must recompute in full."""
    split = {"class_type": "ProCacheTestSplitBatches", "inputs": {"split_calls": "2"}}
    lat, stats, _ = run(comfy_server, prompt("flux", "split", actions="FCFC", before=[split]))
    print(stats)
    assert "5 model evals" in stats and "1 forced full" in stats, stats
    ref, ref_stats, _ = run(comfy_server, prompt("flux", "split_ref", actions="FCFF"))
    assert "4 model evals" in ref_stats and "forced" not in ref_stats, ref_stats
    err = float((lat.double() - ref.double()).norm() / ref.double().norm())
    assert err < 1e-4, err  # step 3 computed in full, as in FCFF (batched vs split rows: float rounding)
    stale, _, _ = run(comfy_server, prompt("flux", "nosplit", actions="FCFC"))
    assert float((stale.double() - ref.double()).norm() / ref.double().norm()) > 100 * max(err, 1e-7)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_another_block_patch_composes_before_and_after_apply(comfy_server, family):
    """A counting +offset patch on block 0 (dit replace for Flux, forward object patch for Wan) installed
    before or after ProCache Apply: with an all-FULL schedule the result is the offset patch alone; with
    FCFC both act (the offset is applied on computed steps, ProCache saves block evaluations)."""
    off = {"class_type": "ProCacheTestBlockOffset", "inputs": {"offset": 0.05, "label": f"off_{family}"}}
    label = f"off_{family}"
    alone, _, calls = run(comfy_server, prompt(family, f"off_{family}", before=[off], count=label))
    plain, _, _ = run(comfy_server, prompt(family, f"plain_{family}"))
    assert len(calls) == 4 and not torch.equal(alone, plain)
    tol = 0.0 if family == "flux" else 1e-5  # Wan's earlier forward is cached as one residual: rounding
    for where in ("before", "after"):
        kw = {where: [off]}
        full, stats, calls = run(comfy_server, prompt(family, f"{where}F_{family}", actions="FFFF", count=label, **kw))
        assert len(calls) == 4, (where, calls)
        assert float((full - alone).abs().max()) <= tol * float(alone.abs().max()), where
        fcfc, stats, calls = run(comfy_server, prompt(family, f"{where}C_{family}", actions="FCFC", count=label, **kw))
        m = re.search(r"\(([\d.]+) of (\d+) block evals saved\)", stats)
        assert m and float(m.group(1)) > 0, stats
        # Flux's chained dit patch wraps the cached block (called every step); a forward patch installed
        # before Apply is part of the cached block (called on computed steps); after Apply it wraps it
        expected = 2 if (family == "wan" and where == "before") else 4
        assert len(calls) == expected, (where, calls)
        proc_only, _, _ = run(comfy_server, prompt(family, f"{where}P_{family}", actions="FCFC"))
        assert not torch.equal(fcfc, proc_only), where  # the offset took effect under ProCache


@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_all_full_equals_plain_host_and_caching_schedule_runs(comfy_server, family):
    """SD3 (``dit`` joint blocks) and Wan (object-patched blocks) through the server of this host: an all-FULL
    schedule gives the plain host run bit for bit; a caching schedule reuses blocks and changes the output."""
    plain, _, _ = run(comfy_server, prompt(family, f"plain_{family}"))
    full, stats, _ = run(comfy_server, prompt(family, f"ffff_{family}", actions="FFFF"))
    assert torch.equal(full, plain), f"{family}: all-FULL differs, max {(full - plain).abs().max().item()}"
    assert f"[{family}]" in stats and "(4 full / 0 selective / 0 cached)" in stats, stats
    cached, stats_c, _ = run(comfy_server, prompt(family, f"fcfc_{family}", actions="FCFC"))
    assert f"[{family}]" in stats_c and "(2 full / 0 selective / 2 cached)" in stats_c, stats_c
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)
