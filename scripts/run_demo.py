"""`make demo`: a real ComfyUI run of an example workflow, with and without ProCache.

Starts the host headless on 127.0.0.1, queues the example workflow (tiny seeded PixArt-α model,
stand-in text embedding, TAESD decode), then the same graph with ProCache bypassed, and prints wall
time, speed-up and the difference to the uncached result. Images land in demo_output/.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_client import ComfyServer, load_latent  # noqa: E402
from workflow_tools import without_procache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW = ROOT / "api_workflows" / "pixart_alpha_procache.api.json"
def exec_seconds(entry: dict) -> float:
    """Execution time as the host reports it (execution_start -> execution_success timestamps)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def set_prefix(prompt: dict, prefix: str) -> dict:
    for node in prompt.values():
        if "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = prefix
    return prompt


def image_array(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, ref: np.ndarray, data_range: float = 255.0) -> float:
    mse = float(np.mean((a - ref) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range ** 2 / mse)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    ap.add_argument("--out", type=Path, default=ROOT / "demo_output")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    prompt = json.loads(args.workflow.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    host_dir = args.out / "host"
    shutil.rmtree(host_dir, ignore_errors=True)
    print(f"[demo] starting ComfyUI with ProCache ({args.workflow.name})", flush=True)
    with ComfyServer(port=args.port, workdir=host_dir) as srv:
        client = srv.client()
        # Warm-up: loads the model and the VAE once so neither timed run pays for it.
        warm = set_prefix(without_procache(prompt), "warmup")
        for node in warm.values():
            if "steps" in node["inputs"]:
                node["inputs"]["steps"] = 1
        client.run(warm, timeout=900)
        runs = {}
        for label, p in (("uncached", set_prefix(without_procache(prompt), "uncached")),
                         ("procache", set_prefix(copy.deepcopy(prompt), "procache"))):
            print(f"[demo] running {label} ...", flush=True)
            t0 = time.perf_counter()
            entry = client.run(p, timeout=1800)
            wall = time.perf_counter() - t0
            runs[label] = {"wall": wall, "exec": exec_seconds(entry),
                           "latent": load_latent(client.output_files(entry, "latents")[0]).double().numpy()
                           if client.output_files(entry, "latents") else None,
                           "images": client.output_files(entry, "images")}
            for img in runs[label]["images"]:
                shutil.copy(img, args.out / f"{label}.png")
        stats_lines = [ln for ln in srv.log().splitlines() if "ProCache" in ln and "steps" in ln]

    base = runs["uncached"]
    print("\n| run | execution s | speed-up | latent rel. L2 vs uncached | image PSNR vs uncached (dB) |")
    print("|---|---|---|---|---|")
    for label, r in runs.items():
        rel = (np.linalg.norm(r["latent"] - base["latent"]) / np.linalg.norm(base["latent"])
               if r["latent"] is not None and base["latent"] is not None else float("nan"))
        p = (psnr(image_array(r["images"][0]), image_array(base["images"][0]))
             if r["images"] and base["images"] else float("nan"))
        print(f"| {label} | {r['exec']:.2f} | {base['exec'] / r['exec']:.2f}x | {rel:.4f} | "
              f"{'identical' if p == float('inf') else f'{p:.1f}'} |")
    if stats_lines:
        print("\n" + stats_lines[-1].strip())
    print(f"\nimages: {args.out / 'uncached.png'}, {args.out / 'procache.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
