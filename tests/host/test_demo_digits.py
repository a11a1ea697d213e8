"""The digits demo models (trained Flux and PixArt-α in the host's own classes) through the real server:
the pack's demo nodes load the bundled weights, the host's KSampler samples them, and the full-compute
samples are recognisable digits to the quality bench's independent classifier. ProCache on the same
graph must keep them recognisable too."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import host_digits as hd  # noqa: E402

pytestmark = pytest.mark.host

DIGITS, REPEAT = "0123456789", 3  # 30 samples, 3 of each digit


@pytest.fixture(scope="module")
def featnet():
    from benchmarks.data import load_or_train_featnet

    net, _ = load_or_train_featnet(log=lambda m: None)
    return net


def accuracy(net, img: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (net(img).argmax(1) == labels).float().mean().item()


@pytest.mark.parametrize("family", ["flux", "pixart"])
def test_trained_digits_model_samples_recognisable_digits(comfy_server, featnet, family):
    client = comfy_server
    labels = hd.labels_of(DIGITS, REPEAT)
    full = client.run(hd.digits_prompt(family, digits=DIGITS, repeat=REPEAT, prefix=f"full_{family}", images=True),
                      timeout=600)
    lat_files = client.output_files(full, "latents")
    img_files = client.output_files(full, "images")
    assert len(lat_files) == 1 and len(img_files) == len(labels)
    x_full = hd.decode_latent_file(lat_files[0])
    acc = accuracy(featnet, x_full, labels)
    assert acc >= 0.9, f"{family}: full-compute label accuracy {acc:.3f} < 0.9"

    # the Decode node's PNG is the same image the test decodes (white digit on black, x4 nearest)
    from PIL import Image
    import numpy as np

    png = np.asarray(Image.open(img_files[0]).convert("L"), dtype=np.float64) / 255.0
    ref = x_full[0, 0].add(1).mul(0.5).repeat_interleave(4, 0).repeat_interleave(4, 1).numpy()
    assert png.shape == (128, 128) and np.abs(png - ref).max() <= 1.0 / 255 + 1e-6

    # ProCache (the paper schedule scaled to 20 steps) on the same graph: fewer block evaluations, digits kept
    pc = client.run(hd.digits_prompt(family, digits=DIGITS, repeat=REPEAT, prefix=f"pc_{family}",
                                     procache={"preset": hd.PAPER_PRESET[family]}), timeout=600)
    st = hd.parse_stats(hd.stats_text(pc))
    assert st["block_eval_fraction"] < 0.75 and st["cached"] > 0
    x_pc = hd.decode_latent_file(client.output_files(pc, "latents")[0])
    assert not torch.equal(x_pc, x_full)
    assert accuracy(featnet, x_pc, labels) >= 0.8


def test_digits_encode_decode_roundtrip_and_img2img(comfy_server, tmp_path):
    """Encode(image) -> Decode is the identity (the stand-in VAE is exactly invertible), and a denoise 0.6
    img2img run starts from the encoded digits (closer to them than a text-to-image run is)."""
    from PIL import Image
    import numpy as np
    from benchmarks.data import load_digits_images

    client = comfy_server
    img, lab = load_digits_images(32)
    pick = [int((lab == d).nonzero()[0]) for d in range(10)]
    frames = [Image.fromarray(((img[i, 0].numpy() + 1) * 127.5).round().astype(np.uint8)).convert("RGB")
              for i in pick]
    # an animated PNG, not a multi-page TIFF: 0.29's LoadImage decodes through PyAV first, which reads only
    # a TIFF's first page (a batch of 1); both loaders read every APNG frame, losslessly
    inp = client.server.workdir / "input" / "digits10.png"
    frames[0].save(inp, save_all=True, append_images=frames[1:])
    src = torch.stack([torch.from_numpy(np.asarray(f.convert("L"), dtype=np.float32) / 127.5 - 1) for f in frames])[:, None]

    p = hd.digits_prompt("flux", digits=DIGITS, init_image=inp.name, denoise=0.6, prefix="i2i")
    p["rt"] = {"class_type": "SaveLatent", "inputs": {"samples": ["latent", 0], "filename_prefix": "rt"}}
    entry = client.run(p, timeout=600)
    files = sorted(client.output_files(entry, "latents"), key=lambda f: f.name)
    rt = [f for f in files if f.name.startswith("rt")][0]
    out = [f for f in files if f.name.startswith("i2i")][0]
    assert (hd.decode_latent_file(rt) - src).abs().max() < 1e-4
    x_i2i = hd.decode_latent_file(out)
    t2i = hd.decode_latent_file(client.output_files(client.run(hd.digits_prompt("flux", digits=DIGITS, prefix="t2i"),
                                                               timeout=600), "latents")[0])
    assert (x_i2i - src).pow(2).mean() < (t2i - src).pow(2).mean()


def test_digit_prompt_rejects_bad_characters(comfy_server):
    from comfy_client import PromptError

    p = hd.digits_prompt("pixart", digits="12a")
    with pytest.raises(PromptError, match="digits"):
        comfy_server.run(p, timeout=120)
    assert comfy_server.get("/system_stats").ok


def test_easycache_fp32_input_aliasing_and_the_benchs_copy_node(comfy_server):
    """Why the in-host bench runs the host's EasyCache on a copy of the model input (tests/host_nodes/nodes_copy_model_input.py): on the
    fp32 Flux digits model the as-shipped EasyCache corrupts the steps it skips, the copied-input run
    follows full compute closely while skipping steps. If the host fixes the aliasing, the first assert
    fails and the bench's "as shipped" rows can go."""
    from benchmarks import metrics

    client = comfy_server
    log = client.server.log

    def run(prefix, **kw):
        entry = client.run(hd.digits_prompt("flux", digits=DIGITS, repeat=1, prefix=prefix, **kw), timeout=600)
        return hd.decode_latent_file(client.output_files(entry, "latents")[0])

    full = run("ec_full")
    before = len(hd.hostcache_skipped(log(), "EasyCache"))
    shipped = run("ec_shipped", hostcache=("EasyCache", 0.15, False))
    copied = run("ec_copied", hostcache=("EasyCache", 0.15, True))
    skipped = hd.hostcache_skipped(log(), "EasyCache")[before:]
    assert len(skipped) == 2 and all(s > 0 for s in skipped), skipped  # both skipped steps
    p_shipped = metrics.psnr(shipped, full).mean().item()
    p_copied = metrics.psnr(copied, full).mean().item()
    assert p_shipped < 15.0, f"as-shipped EasyCache now follows full compute ({p_shipped:.1f} dB): host fixed?"
    assert p_copied > 25.0, f"copied-input EasyCache only {p_copied:.1f} dB to full compute"


@pytest.mark.parametrize("name", ["digits_flux_procache", "digits_pixart_procache"])
def test_shipped_digits_api_workflow_runs_as_is(comfy_server, featnet, name):
    """The API workflows users post on their own ComfyUI (api_workflows/digits_*_procache.api.json), unedited:
    they run, ProCache caches with a verified block adapter, and the 20 samples are the prompted digits."""
    import json

    p = json.loads((ROOT / "api_workflows" / f"{name}.api.json").read_text())
    entry = comfy_server.run(p, timeout=600)
    text = hd.stats_text(entry)
    assert text is not None and "failed verification" not in text, text
    st = hd.parse_stats(text)
    assert st["block_eval_fraction"] < 0.75 and st["cached"] > 0, text
    assert len(comfy_server.output_files(entry, "images")) == 20
    x = hd.decode_latent_file(comfy_server.output_files(entry, "latents")[0])
    assert accuracy(featnet, x, hd.labels_of(p["pos"]["inputs"]["digits"], p["pos"]["inputs"]["repeat"])) >= 0.8
