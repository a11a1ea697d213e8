"""ProCache next to other host features, through the REAL ComfyUI server.

* a LoRA-patched model (host LoraLoaderModelOnly, a seeded tiny LoRA written into models/loras/),
  in both orders (LoRA -> Apply, Apply -> LoRA);
* CFG whose cond and uncond are evaluated apart (different token counts: PixArt's c_crossattn is a
  CONDRegular, whose can_concat needs equal shapes, so comfy/samplers.py calc_cond_batch runs them as
  two model calls) and batched together (equal token counts: one call of batch 2);
* determinism: the same prompt, seed and schedule sampled twice gives bitwise identical latents.

Tiny seeded PixArt-α (4 blocks, hidden 1152) at 512x256 (latent 64x32), 4 euler steps, cfg 2.
"""
from __future__ import annotations

import re

import pytest
import torch

from comfy_client import COMFY_DIR, load_latent
from workflows import pixart_prompt

SEL = {"enabled": True, "depth_fraction": 0.5, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
       "w_output_norm": 0.25, "w_spatial": 0.5}
W, H, STEPS = 512, 256, 4
LORA_NAME = "procache-test-tiny-pixart-alpha-lora.safetensors"
LORA_RANK = 8
LORA_TARGETS = ("attn.qkv", "cross_attn.q_linear", "mlp.fc1", "mlp.fc2")
# relative L2 of "FCSF" (selective on the deeper half) vs the same graph uncached, measured on this
# tiny model at 512x256, 4 euler steps, cfg 2 (printed by the tests): LoRA 0.00273 (both orders),
# cond/uncond apart 0.00254, batched 0.00254. Bound with ~4x margin.
REL_L2_BOUND = 0.01


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def make_tiny_lora() -> dict[str, torch.Tensor]:
    """Seeded rank-8 LoRA on every block of the tiny PixArt-α, in the host's generic key layout:
    ``diffusion_model.<module>.lora_up.weight`` / ``lora_down.weight`` / ``alpha`` (comfy/lora.py
    model_lora_keys_unet maps ``diffusion_model.<module>`` to ``diffusion_model.<module>.weight``)."""
    from safetensors.torch import load_file

    base = load_file(str(COMFY_DIR / "models" / "diffusion_models" / "procache-tiny-pixart-alpha.safetensors"))
    gen = torch.Generator().manual_seed(1234)
    sd: dict[str, torch.Tensor] = {}
    n_blocks = len({k.split(".")[1] for k in base if k.startswith("blocks.")})
    for i in range(n_blocks):
        for t in LORA_TARGETS:
            out_f, in_f = base[f"blocks.{i}.{t}.weight"].shape
            key = f"diffusion_model.blocks.{i}.{t}"
            # delta std ~ sqrt(8) * 0.06^2 ~ 0.01, a third of the weights' std (0.03)
            sd[f"{key}.lora_up.weight"] = torch.randn((out_f, LORA_RANK), generator=gen) * 0.06
            sd[f"{key}.lora_down.weight"] = torch.randn((LORA_RANK, in_f), generator=gen) * 0.06
            sd[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    return sd


@pytest.fixture(scope="module")
def lora_file():
    from safetensors.torch import save_file

    folder = COMFY_DIR / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LORA_NAME
    sd = make_tiny_lora()
    if path.exists():
        from safetensors.torch import load_file
        old = load_file(str(path))
        if old.keys() == sd.keys() and all(torch.equal(old[k], sd[k]) for k in sd):
            return LORA_NAME
    save_file(sd, str(path))
    return LORA_NAME


def prompt(prefix: str, *, procache: dict | None = None, lora: str | None = None, neg_tokens: int = 8,
           seed: int = 0) -> dict:
    """PixArt prompt; `lora` = "before" (LoRA -> Apply), "after" (Apply -> LoRA) or "only" (no Apply)."""
    p = pixart_prompt(steps=STEPS, width=W, height=H, seed=seed, cfg=2.0, prefix=prefix, procache=procache)
    p["neg"]["inputs"]["tokens"] = neg_tokens
    if lora is not None:
        p["lora"] = {"class_type": "LoraLoaderModelOnly",
                     "inputs": {"model": ["unet", 0], "lora_name": LORA_NAME, "strength_model": 1.0}}
        if lora == "only":
            assert procache is None
            p["sampler"]["inputs"]["model"] = ["lora", 0]
        elif lora == "before":
            p["apply"]["inputs"]["model"] = ["lora", 0]
        elif lora == "after":
            p["lora"]["inputs"]["model"] = ["apply", 0]
            p["sampler"]["inputs"]["model"] = ["lora", 0]
        else:
            raise ValueError(lora)
    if procache is not None:
        p["stats"] = {"class_type": "ProCacheStats",
                      "inputs": {"samples": ["sampler", 0], "model": list(p["sampler"]["inputs"]["model"])}}
    return p


def run(client, p: dict) -> tuple[torch.Tensor, dict]:
    entry = client.run(p, timeout=900)
    files = client.output_files(entry, "latents")
    assert len(files) == 1, entry.get("outputs")
    return load_latent(files[0]), entry


def stats_text(entry: dict) -> str:
    texts = [t for o in entry["outputs"].values() for t in (o.get("text") or []) if str(t).startswith("ProCache [")]
    assert texts, entry["outputs"]
    assert "not matched" not in texts[0], texts[0]
    return texts[0]


def model_evals(entry: dict) -> int:
    return int(re.search(r"(\d+) model evals", stats_text(entry)).group(1))


def run_lines(client) -> int:
    return len(re.findall(r"ProCache \[pixart\] run:", client.server.log()))


@pytest.fixture(scope="module")
def base(comfy_server):
    """No LoRA, no ProCache, cond and uncond batched (8 tokens each)."""
    return run(comfy_server, prompt("compat_base"))[0]


# -- (a) LoRA ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_only(comfy_server, lora_file):
    lat, _ = run(comfy_server, prompt("compat_lora", lora="only"))
    return lat


def test_lora_is_really_applied(comfy_server, base, lora_only):
    log = comfy_server.server.log()
    assert "lora key not loaded" not in log, [ln for ln in log.splitlines() if "lora key" in ln][:5]
    assert torch.isfinite(lora_only).all()
    err = rel_l2(lora_only, base)
    print(f"rel L2 LoRA vs no LoRA: {err:.4f}")
    assert err > 0.02, err


def test_lora_then_apply_all_full_is_bitwise_equal(comfy_server, lora_only):
    lat, entry = run(comfy_server, prompt("compat_lora_ffff", lora="before", procache={"actions": "FFFF"}))
    assert torch.equal(lat, lora_only)
    assert "(4 full / 0 selective / 0 cached)" in stats_text(entry)


def test_apply_then_lora_all_full_is_bitwise_equal(comfy_server, lora_only):
    lat, entry = run(comfy_server, prompt("compat_ffff_lora", lora="after", procache={"actions": "FFFF"}))
    assert torch.equal(lat, lora_only)
    assert "(4 full / 0 selective / 0 cached)" in stats_text(entry)


def test_lora_with_schedule_both_orders_stay_close(comfy_server, base, lora_only):
    before, e1 = run(comfy_server, prompt("compat_lora_fcsf", lora="before",
                                          procache={"actions": "FCSF", "selective": SEL}))
    after, e2 = run(comfy_server, prompt("compat_fcsf_lora", lora="after",
                                         procache={"actions": "F C S F", "selective": SEL}))
    for lat, entry, name in ((before, e1, "LoRA->Apply"), (after, e2, "Apply->LoRA")):
        assert "(2 full / 1 selective / 1 cached)" in stats_text(entry)
        err = rel_l2(lat, lora_only)
        print(f"rel L2 FCSF {name} vs LoRA uncached: {err:.5f}")
        assert 0.0 < err < REL_L2_BOUND, (name, err)
        # the cached run follows the LoRA model, not the base one
        assert rel_l2(lat, base) > 5 * err, (name, rel_l2(lat, base), err)
    assert torch.equal(before, after)  # same weights, same schedule: the order does not matter


# -- (b) CFG: cond and uncond apart / batched --------------------------------------------------------

@pytest.fixture(scope="module")
def apart_uncached(comfy_server):
    return run(comfy_server, prompt("compat_apart", neg_tokens=12))[0]


def test_cfg_cond_uncond_apart_all_full_bitwise_and_schedule_close(comfy_server, apart_uncached, base):
    full, e_full = run(comfy_server, prompt("compat_apart_ffff", neg_tokens=12, procache={"actions": "FFFF"}))
    assert torch.equal(full, apart_uncached)
    # 12 vs 8 tokens cannot be concatenated: the host evaluates cond and uncond separately
    assert model_evals(e_full) == 2 * STEPS, stats_text(e_full)
    assert "(0.0 of 32 block evals saved)" in stats_text(e_full)  # 4 blocks x 8 evaluations

    lat, entry = run(comfy_server, prompt("compat_apart_fcsf", neg_tokens=12,
                                          procache={"actions": "FCSF", "selective": SEL}))
    text = stats_text(entry)
    assert "(2 full / 1 selective / 1 cached)" in text and model_evals(entry) == 2 * STEPS, text
    err = rel_l2(lat, apart_uncached)
    print(f"rel L2 FCSF vs uncached, cond/uncond apart: {err:.5f}")
    assert 0.0 < err < REL_L2_BOUND, err
    assert rel_l2(apart_uncached, base) > 5 * err  # the 12-token negative really is another graph


def test_cfg_cond_uncond_batched_schedule_close(comfy_server, base):
    full, e_full = run(comfy_server, prompt("compat_batched_ffff", procache={"actions": "FFFF"}))
    assert torch.equal(full, base)
    assert model_evals(e_full) == STEPS, stats_text(e_full)  # one batch-2 call per step
    assert "(0.0 of 16 block evals saved)" in stats_text(e_full)  # 4 blocks x 4 evaluations
    lat, entry = run(comfy_server, prompt("compat_batched_fcsf", procache={"actions": "FCSF", "selective": SEL}))
    assert model_evals(entry) == STEPS, stats_text(entry)
    err = rel_l2(lat, base)
    print(f"rel L2 FCSF vs uncached, cond/uncond batched: {err:.5f}")
    assert 0.0 < err < REL_L2_BOUND, err


# -- (c) determinism ---------------------------------------------------------------------------------

def test_same_seed_and_schedule_twice_is_bitwise_identical(comfy_server):
    proc = {"actions": "FCSF", "selective": SEL}
    n0 = run_lines(comfy_server)
    a1, _ = run(comfy_server, prompt("compat_det_a1", seed=7, procache=proc))
    b, _ = run(comfy_server, prompt("compat_det_b", seed=8, procache=proc))  # evicts seed 7 from the host cache
    a2, _ = run(comfy_server, prompt("compat_det_a2", seed=7, procache=proc))
    assert run_lines(comfy_server) - n0 == 3  # the sampler really ran three times
    assert not torch.equal(a1, b)
    assert torch.equal(a1, a2)


# -- UI-format example workflow (what the frontend saves: nodes / links / widgets_values) -------------

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widget_inputs(spec: dict) -> list[tuple[str, bool]]:
    """(name, has a control_after_generate value) of the node's widgets, in the frontend's order.

    Order: object_info's ``input_order`` (required, then optional). A widget is a primitive or combo
    input without forceInput; an INT (or combo) gets a second "control after generate" value when its
    spec says so, an INT named seed/noise_seed also when the spec leaves it unset (frontend 1.32:
    ``control_after_generate ?? ["seed","noise_seed"].includes(name)``)."""
    order = spec.get("input_order") or {s: list(spec["input"].get(s, {})) for s in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            typ, opts = (spec["input"][section][name] + [{}])[:2]
            opts = opts or {}
            is_combo = isinstance(typ, list) or typ == "COMBO"
            if not (is_combo or typ in WIDGET_TYPES) or opts.get("forceInput"):
                continue
            ctl = opts.get("control_after_generate")
            if ctl is None and typ == "INT":
                ctl = name in ("seed", "noise_seed")
            out.append((name, bool(ctl) and (typ == "INT" or is_combo)))
    return out


_MISSING = object()


def ui_to_api(ui: dict, info: dict) -> dict:
    """Converts a UI-format workflow into an API prompt (as the frontend's graphToPrompt does),
    asserting on the way that it is consistent with the server's /object_info."""
    links = {lk[0]: lk for lk in ui["links"]}
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] >= max(nodes)
    assert ui["last_link_id"] >= max(links)
    prompt = {}
    for n in ui["nodes"]:
        ct = n["type"]
        assert ct in info, f"node {n['id']}: unknown type {ct}"
        spec = info[ct]
        widgets = _widget_inputs(spec)
        expected = sum(2 if ctl else 1 for _, ctl in widgets)
        # a workflow saved before a node gained a trailing widget has fewer values: the frontend keeps
        # the new widget's default (and so does the server for an optional input left out)
        assert len(n["widgets_values"]) <= expected, (ct, n["widgets_values"], widgets)
        inputs: dict = {}
        vals = iter(n["widgets_values"])
        for name, ctl in widgets:
            v = next(vals, _MISSING)
            if v is _MISSING:
                break
            inputs[name] = v
            if ctl:
                assert next(vals) in ("fixed", "increment", "decrement", "randomize"), ct
        all_specs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        for slot, inp in enumerate(n.get("inputs", [])):
            if inp.get("link") is None:
                continue
            lk = links[inp["link"]]
            _, src, src_slot, dst, dst_slot, typ = lk
            assert (dst, dst_slot) == (n["id"], slot), lk
            assert inp["name"] in all_specs and all_specs[inp["name"]][0] == typ == inp["type"], (ct, inp, lk)
            src_node = nodes[src]
            assert info[src_node["type"]]["output"][src_slot] == typ, (src_node["type"], src_slot, typ)
            assert inp["link"] in src_node["outputs"][src_slot]["links"], lk
            inputs[inp["name"]] = [str(src), src_slot]
        for name in spec["input"].get("required", {}):
            assert name in inputs, f"{ct} ({n['id']}) misses required input {name}"
        prompt[str(n["id"])] = {"class_type": ct, "inputs": inputs}
    return prompt


def _normalised(prompt: dict, info: dict) -> dict:
    """Node ids replaced by (class_type, sorted links) paths, optional widget defaults filled in."""
    def label(nid):
        node = prompt[nid]
        ins = {k: (label(v[0]), v[1]) if isinstance(v, list) else v for k, v in sorted(node["inputs"].items())}
        for name, (typ, *rest) in info[node["class_type"]]["input"].get("optional", {}).items():
            opts = rest[0] if rest else {}
            if name not in ins and "default" in (opts or {}):
                ins[name] = opts["default"]
        return node["class_type"], tuple(sorted(ins.items(), key=lambda kv: kv[0]))

    return sorted((label(nid) for nid in prompt), key=repr)


def test_ui_format_pixart_example_matches_object_info_and_api_json(comfy_server):
    import json
    from pathlib import Path

    # a UI workflow saved with the earlier wiring (Schedule Loader -> Apply, its output then named
    # 'actions') must keep converting to the same prompt and running
    root = Path(__file__).resolve().parents[2]
    ui = json.loads((root / "tests" / "fixtures" / "legacy_pixart_alpha_procache.ui.json").read_text())
    api = json.loads((root / "api_workflows" / "pixart_alpha_procache.api.json").read_text())
    info = comfy_server.object_info()
    converted = ui_to_api(ui, info)
    assert _normalised(converted, info) == _normalised(api, info)
    # the server accepts and runs the converted prompt (1 step, cfg 1, no decode: CPU time)
    for nid, node in list(converted.items()):
        if node["class_type"] in ("VAELoader", "VAEDecode", "SaveImage"):
            converted.pop(nid)
        if node["class_type"] == "KSampler":
            node["inputs"].update(steps=1, cfg=1.0)
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=W, height=H)
        if node["class_type"] == "SaveLatent":
            node["inputs"]["filename_prefix"] = "compat_ui"
    lat, _ = run(comfy_server, converted)
    assert lat.shape == (1, 4, H // 8, W // 8) and torch.isfinite(lat).all()
