"""`make demo`: the trained digits models run by the real ComfyUI server, with and without ProCache.

Starts the host headless on 127.0.0.1 and queues the API workflows api_workflows/digits_*.api.json
(the pack's demo digits models in the host's Flux and PixArt-α architectures, ProCache with the paper schedule,
KSampler, decode), then the same graphs with ProCache bypassed, each twice in turn. Prints the wall time,
speed-up and difference to the uncached result, and writes demo_output/demo.png: rows of digits per model
and method, with the speed-up and PSNR in the captions.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from comfy_client import ComfyServer, load_latent  # noqa: E402
from workflow_tools import without_procache  # noqa: E402

WORKFLOWS = {"flux": ("Flux", ROOT / "api_workflows" / "digits_flux_procache.api.json"),
             "pixart": ("PixArt-alpha", ROOT / "api_workflows" / "digits_pixart_procache.api.json")}


def exec_seconds(entry: dict) -> float:
    """Execution time as the host reports it (execution_start -> execution_success timestamps)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def set_prefix(prompt: dict, prefix: str) -> dict:
    for node in prompt.values():
        if "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = prefix
    return prompt


def psnr(a: np.ndarray, ref: np.ndarray, data_range: float = 255.0) -> float:
    mse = float(np.mean((a - ref) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range ** 2 / mse)


def load_images(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float64) for p in sorted(paths)])


def stats_line(entry: dict) -> str | None:
    for out in entry.get("outputs", {}).values():
        for t in out.get("text", []) or []:
            if isinstance(t, str) and t.startswith("ProCache ["):
                return t
    return None


def picture(rows: list[tuple[str, np.ndarray]], path: Path, per_row: int = 10) -> None:
    """One PNG: a caption line above each row of digit images (white on black)."""
    from PIL import Image, ImageDraw, ImageFont

    cell = rows[0][1].shape[-1]
    pad, cap_h = 4, 22
    width = per_row * (cell + pad) + pad
    height = sum(cap_h + cell + pad for _ in rows) + pad
    canvas = Image.new("RGB", (max(width, 560), height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    y = pad
    for caption, imgs in rows:
        draw.text((pad, y + 3), caption, fill=(0, 0, 0), font=font)
        y += cap_h
        for i, im in enumerate(imgs[:per_row]):
            canvas.paste(Image.fromarray(im.clip(0, 255).astype(np.uint8)).convert("RGB"), (pad + i * (cell + pad), y))
        y += cell + pad
    canvas.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "demo_output")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="timed runs per method (in turn); the fastest counts")
    ap.add_argument("--models", default="flux,pixart", help="comma list of flux, pixart (default: both)")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in WORKFLOWS]
    if unknown or not names:
        ap.error(f"--models: unknown {unknown or names}; use a comma list of {', '.join(WORKFLOWS)}")
    workflows = [WORKFLOWS[m] for m in names]

    args.out.mkdir(parents=True, exist_ok=True)
    host_dir = args.out / "host"
    shutil.rmtree(host_dir, ignore_errors=True)
    print("[demo] starting ComfyUI with ProCache (digits models trained in the host's Flux and PixArt-α classes)",
          flush=True)
    results = []
    with ComfyServer(port=args.port, workdir=host_dir) as srv:
        client = srv.client()
        for name, wf in workflows:
            prompt = json.loads(wf.read_text())
            warm = set_prefix(without_procache(prompt), "warmup")
            for node in warm.values():
                if "steps" in node["inputs"]:
                    node["inputs"]["steps"] = 2
            client.run(warm, timeout=900)  # loads the model once so no timed run pays for it
            runs: dict[str, dict] = {"uncached": {"exec": []}, "procache": {"exec": []}}
            for rnd in range(args.rounds):
                for label in ("uncached", "procache"):
                    tag = f"{name.split('-')[0].lower()}_{label}_{rnd}"
                    p = set_prefix(without_procache(prompt) if label == "uncached" else copy.deepcopy(prompt), tag)
                    print(f"[demo] {name}: {label} (round {rnd + 1}/{args.rounds}) ...", flush=True)
                    entry = client.run(p, timeout=1800)
                    r = runs[label]
                    r["exec"].append(exec_seconds(entry))
                    r["latent"] = load_latent(client.output_files(entry, "latents")[0]).double().numpy()
                    r["images"] = load_images(client.output_files(entry, "images"))
                    r["stats"] = stats_line(entry) or r.get("stats")
            results.append((name, runs))

    print("\n| model | run | execution s (best of %d) | speed-up | latent rel. L2 vs uncached | image PSNR vs uncached (dB) |"
          % args.rounds)
    print("|---|---|---|---|---|---|")
    rows = []
    for name, runs in results:
        base = runs["uncached"]
        for label, r in runs.items():
            t = min(r["exec"])
            r["speedup"] = min(base["exec"]) / t
            r["rel"] = float(np.linalg.norm(r["latent"] - base["latent"]) / np.linalg.norm(base["latent"]))
            r["psnr"] = psnr(r["images"], base["images"])
            shown = "identical" if r["psnr"] == float("inf") else f"{r['psnr']:.1f}"
            print(f"| {name} | {label} | {t:.2f} | {r['speedup']:.2f}x | {r['rel']:.4f} | {shown} |")
        pc = runs["procache"]
        rows.append((f"{name}, full compute ({min(base['exec']):.2f} s)", base["images"]))
        rows.append((f"{name} + ProCache: {pc['speedup']:.2f}x faster, PSNR {pc['psnr']:.1f} dB vs full", pc["images"]))
    for name, runs in results:
        if runs["procache"].get("stats"):
            print(f"\n{name}: {runs['procache']['stats'].strip()}")
    out_png = args.out / "demo.png"
    picture(rows, out_png)
    print(f"\npicture: {out_png}  (images: {args.out / 'host' / 'output'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
