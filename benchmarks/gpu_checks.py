"""The code paths of ProCache that only a CUDA machine shows, run against the real host.

    python -m benchmarks.gpu_checks [--host DIR --host-py PYTHON] [--out benchmarks/results/gpu_checks.md]

UNRUN: written on a machine without a GPU; nothing of it has run on CUDA yet, so its first run on a GPU
may find mistakes in this script as well as in ProCache. ``--plumbing-on-cpu`` runs the same steps on
the CPU (no dynamic VRAM, one device) to check the script itself; it writes no results.

Without CUDA it prints that it needs CUDA and exits 0, writing nothing. On CUDA (`make bench` runs it;
about 2-3 minutes, two short server starts) it writes benchmarks/results/gpu_checks.md. The host is the
newest ComfyUI of the host matrix (.host/matrix/hosts.txt, e.g. 0.29.0: dynamic VRAM, multi-GPU split)
if one is set up (`make test-hosts`), else .host/ComfyUI (0.3.75: checks 1 and 6 are then skipped as
that host has neither); --host / --host-py pick another. The checks (the CPU test that
covers each path with only the device queries answered is named in brackets):

1. dynamic VRAM loader: the real server on CUDA; where the host's venv has comfy-aimdo, main.py must
   report "DynamicVRAM support detected and enabled", and a UNETLoader model (a tiny seeded Flux.1 file
   this script writes with the host's own classes) then loads through ModelPatcherDynamic.
2. ProCache under that loader, lazy adaLN with weights cast on the fly: the loader stages every layer
   in aimdo's vbar, so reused steps must evaluate the adaLN linears whole; the same ProCache prompt on a
   second server with --disable-dynamic-vram (rows sliced from resident weights) must give the same
   latent up to float rounding [tests/host/test_dynamic_vram.py::test_lazy_adaln_works_or_steps_aside].
3. cache placement `auto`: ProCache's logged decision for that run (a tiny cache on a large GPU) must be
   the model device, not CPU memory [test_auto_counts_evictable_memory_as_free].
4. memory hint: the server log must show ProCache telling the host's loader about the cache bytes
   [test_the_hosts_loader_receives_the_hint].
5. lazy adaLN in process on CUDA: weights resident on the GPU -> reused steps slice the gate rows and a
   computed step equals the host's forward; the host's low-VRAM loader (ModelPatcher.load with a 1-byte
   budget: weights cast to the GPU per call) -> rows never sliced, same reuse result as resident weights.
6. multi-GPU CFG split (ComfyUI 0.29 comfy.multigpu) on two CUDA devices if the machine has two: one
   ProCache run state per device, on that device's clone, result equal to the single-device run up to
   float rounding [tests/host/test_multigpu_split.py]; with one device it is reported as skipped.

Every check reports pass, FAIL or skipped with what it saw; the exit status is 1 when any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "gpu_checks.md"
FLUX_FILE = "procache-gpucheck-tiny-flux.safetensors"
MARK = "GPUCHECK "
CTX = 64
sys.path.insert(0, str(ROOT / "tests" / "host"))
from workflows import flux_conditioning, sample_and_save, sample_through_procache  # noqa: E402  (shared prompt builders)


# ------------------------------------------------------------------------------------------ in the host

def _child_setup(device: str):
    """In the host's venv: the host on ``device`` (``cuda`` or ``cpu``), the pack, the test helpers."""
    sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests" / "host")]
    from host_inprocess import use_host

    use_host(cpu=device == "cpu")
    import comfy.model_management as mm  # decides the device now (the pack's loader would pick CPU)

    return mm


def child_flux_file(device: str, host: str) -> dict:
    """Writes the tiny seeded Flux.1 of tests/host/test_multigpu_split.py as a diffusion-model file."""
    _child_setup("cpu")   # written on the CPU
    from safetensors.torch import save_file
    from test_multigpu_split import tiny_flux_patcher

    out = Path(host) / "models" / "diffusion_models" / FLUX_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in tiny_flux_patcher().model.diffusion_model.state_dict().items()}
    save_file(sd, str(out))
    return {"file": str(out), "params": sum(v.numel() for v in sd.values())}


def _flux_inputs(dev):
    import torch

    g = torch.Generator().manual_seed(7)
    d = dict(x=torch.randn(2, 16, 16, 16, generator=g), timestep=torch.tensor([0.6, 0.6]),
             context=torch.randn(2, 8, 64, generator=g), y=torch.randn(2, 768, generator=g),
             guidance=torch.tensor([3.5, 3.5]))
    return {k: v.to(dev) for k, v in d.items()}


def child_lazy_adaln(device: str, host: str) -> dict:
    mm = _child_setup(device)
    import torch
    from _families import patched_run
    from procache_pack.nodes.adapters import modulation as MOD
    from test_multigpu_split import tiny_flux_patcher

    dev = mm.get_torch_device()
    inputs = _flux_inputs(dev)

    def call(_family, dm, to):
        with torch.no_grad():
            return dm(transformer_options=to, **inputs)

    def lins(dm):
        return [m.lin for b in dm.double_blocks for m in (b.img_mod, b.txt_mod)] + \
            [b.modulation.lin for b in dm.single_blocks]

    real_rows = MOD.linear_rows
    out = {"device": str(dev)}
    ref_mp = tiny_flux_patcher()
    ref_mp.model.diffusion_model.to(dev)
    results = {}
    for how in ("resident", "lowvram"):
        mp = tiny_flux_patcher()
        dm = mp.model.diffusion_model
        if how == "resident":
            dm.to(dev)
        else:   # the host's own partial load: layers left on the offload device, cast per call
            mp.load(dev, lowvram_model_memory=1, force_patch_weights=False, full_load=False)
        host_out = call("flux", dm, {})
        n = [0]

        def rows(*a, **k):
            n[0] += 1
            return real_rows(*a, **k)

        MOD.linear_rows = rows
        try:
            outs, _run = patched_run("flux", dm, "FC", call, ratio=0.0)
        finally:
            MOD.linear_rows = real_rows
        reasons = sorted({str(MOD.why_unsliced(lin)) for lin in lins(dm)})
        results[how] = (outs, n[0], reasons, host_out)
        if how == "lowvram":
            mp.detach()
    ref_outs = patched_run("flux", ref_mp.model.diffusion_model, "FC", call, ratio=0.0)[0]
    for how, (outs, n_rows, reasons, host_out) in results.items():
        diff0 = float((outs[0].float() - host_out.float()).abs().max())
        diff1 = float((outs[1].float() - ref_outs[1].float()).abs().max())
        out[how] = {"row_slices": n_rows, "reasons": reasons, "computed_step_max_abs_diff_to_host": diff0,
                    "reused_step_max_abs_diff_to_resident": diff1,
                    "reused_step_scale": float(ref_outs[1].float().abs().max())}
    return out


def child_multigpu(device: str, host: str) -> dict:
    mm = _child_setup(device)
    import torch

    try:
        import comfy.multigpu
        import comfy.model_patcher as cmp
    except ImportError:
        return {"skipped": "this ComfyUI has no multi-GPU CFG split (comfy.multigpu)"}
    if not hasattr(cmp.ModelPatcher, "deepclone_multigpu"):
        return {"skipped": "this ComfyUI has no ModelPatcher.deepclone_multigpu"}
    devices = mm.get_all_torch_devices()
    if len(devices) < 2:
        return {"skipped": f"one device only ({', '.join(map(str, devices))}): the split needs two"}
    import pytest
    from test_multigpu_split import _apply, _sample, _spy_workers, tiny_flux_patcher

    base = tiny_flux_patcher()
    single = _sample(_apply(base, "FCFCFC"))
    with pytest.MonkeyPatch.context() as mp:  # the test's worker spy, undone on leaving
        seen = _spy_workers(mp)
        split = comfy.multigpu.create_multigpu_deepclones(_apply(base, "FCFCFC"), 2, reuse_loaded=True)
        clones = split.get_additional_models_with_key("multigpu")
        t0 = time.monotonic()
        out = _sample(split)
        secs = time.monotonic() - t0
    dms = {str(w.device): (w.dm is base.model.diffusion_model, any(w.dm is c.model.diffusion_model for c in clones))
           for w in seen}
    return {"devices": [str(d) for d in devices[:2]], "clone_devices": [str(c.load_device) for c in clones],
            "worker_devices": sorted(dms), "worker_on_own_model": dms,
            "cached_steps": [int(w.run.stats.steps_cached) for w in seen],
            "max_abs_diff_to_single": float((out.float().cpu() - single.float().cpu()).abs().max()),
            "scale": float(single.float().abs().max()), "seconds": round(secs, 2)}


CHILDREN = {"flux_file": child_flux_file, "lazy_adaln": child_lazy_adaln, "multigpu": child_multigpu}


def run_child(name: str, py: str, host: str, device: str, timeout: int = 600) -> dict:
    env = dict(os.environ, PROCACHE_HOST=host, PROCACHE_HOST_PY=py, PYTHONUNBUFFERED="1")
    p = subprocess.run([py, str(Path(__file__).resolve()), "--child", name, "--device", device, "--host", host],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}


# ------------------------------------------------------------------------------------- the real server

def flux_prompt(prefix: str, actions: str | None) -> dict:
    p = {
        "model": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX_FILE, "weight_dtype": "default"}},
        **flux_conditioning(CTX),
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        **sample_and_save("model", positive="guid", prefix=prefix, steps=8, cfg=2.0),
    }
    if actions:
        sample_through_procache(p, "model", {"actions": actions, "apply": {"cache_device": "auto"}})
    return p


def server_runs(cpu: bool, extra: list[str], tag: str) -> dict:
    """One real server: the plain prompt and the ProCache prompt; latents, the stats line and the log."""
    from comfy_client import ComfyServer, load_latent

    work = Path(tempfile.mkdtemp(prefix=f"procache-gpucheck-{tag}-"))
    srv = ComfyServer(workdir=work, cpu=cpu, extra_args=extra)
    res: dict = {"flags": extra}
    srv.start()
    try:
        client = srv.client()
        for key, actions in (("plain", None), ("procache", "FCFCFCFF")):
            mark = len(srv.log())
            try:
                entry = client.run(flux_prompt(f"gpucheck_{tag}_{key}", actions), timeout=300)
            except Exception as e:  # noqa: BLE001 (reported as the check's failure)
                res[key] = {"error": f"{type(e).__name__}: {str(e)[:600]}"}
                continue
            files = client.output_files(entry, "latents")
            texts = [t for o in entry["outputs"].values() for t in (o.get("text") or [])
                     if str(t).startswith("ProCache [")]
            res[key] = {"latent": load_latent(files[0]) if files else None, "stats": texts[0] if texts else "",
                        "log": srv.log()[mark:]}
        res["log"] = srv.log()
    finally:
        srv.stop()
    return res


def _log_lines(log: str, pattern: str) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if re.search(pattern, ln)]


def server_checks(host: str, py: str, cpu: bool) -> list[dict]:
    checks: list[dict] = []
    has_aimdo = subprocess.run([py, "-c", "import comfy_aimdo"], capture_output=True).returncode == 0
    has_flag = "--disable-dynamic-vram" in (Path(host) / "comfy" / "cli_args.py").read_text()
    made = run_child("flux_file", py, host, "cpu")
    if "error" in made:
        return [{"check": "server runs", "result": "FAIL", "detail": "could not write the tiny Flux file: " + made["error"]}]
    a = server_runs(cpu, [], "default")
    log = a.get("log", "")
    enabled = "DynamicVRAM support detected and enabled" in log
    if cpu:
        checks.append({"check": "1 dynamic VRAM loader", "result": "skipped",
                       "detail": "plumbing run on the CPU: dynamic VRAM is CUDA only"})
    elif not has_aimdo:
        checks.append({"check": "1 dynamic VRAM loader", "result": "skipped",
                       "detail": "the host's venv has no comfy-aimdo (ComfyUI before 0.16): legacy loader"})
    else:
        lines = _log_lines(log, r"DynamicVRAM|comfy-aimdo|aimdo")[:3]
        checks.append({"check": "1 dynamic VRAM loader", "result": "pass" if enabled else "FAIL",
                       "detail": "; ".join(lines) or "no DynamicVRAM line in the server log"})
    pc = a.get("procache", {})
    plain = a.get("plain", {})
    if "error" in pc or "error" in plain or pc.get("latent") is None:
        checks.append({"check": "2 ProCache run", "result": "FAIL",
                       "detail": (pc.get("error") or plain.get("error") or "no latent saved")})
        return checks
    import torch

    lat, ref = pc["latent"], plain["latent"]
    cached = re.search(r"\((\d+) full / (\d+) selective / (\d+) cached\)", pc["stats"])
    ok_run = bool(torch.isfinite(lat).all()) and cached is not None and int(cached.group(3)) > 0
    detail = f"stats: {pc['stats'][:160]}; rel. L2 to the plain run {float((lat - ref).norm() / ref.norm()):.4f}"
    if enabled and has_flag:
        b = server_runs(cpu, ["--disable-dynamic-vram"], "legacy")
        lb = (b.get("procache") or {}).get("latent")
        if lb is None:
            ok_run = False
            detail += f"; legacy-loader run failed: {(b.get('procache') or {}).get('error')}"
        else:
            rel = float((lat - lb).norm() / lb.norm())
            ok_run = ok_run and rel < 1e-3
            detail += f"; rel. L2 to the same prompt with --disable-dynamic-vram (rows sliced) {rel:.2e} (< 1e-3)"
    else:
        detail += "; no dynamic loader, so no comparison with --disable-dynamic-vram"
    checks.append({"check": "2 ProCache under that loader (lazy adaLN, weights cast on the fly)",
                   "result": "pass" if ok_run else "FAIL", "detail": detail})
    est = _log_lines(pc["log"], r"ProCache: cache estimate")
    where = est[-1].rsplit("->", 1)[-1].strip() if est else ""
    checks.append({"check": "3 cache placement auto", "result": "pass" if "model device" in where else "FAIL",
                   "detail": est[-1][est[-1].find("ProCache:"):] if est else "no cache estimate line in the log"})
    hint = _log_lines(pc["log"], r"ProCache: told the model loader about")
    m = re.search(r"about ([\d.]+) MiB", hint[-1]) if hint else None
    checks.append({"check": "4 memory hint to the host's loader",
                   "result": "pass" if m and float(m.group(1)) > 0 else "FAIL",
                   "detail": hint[-1][hint[-1].find("ProCache:"):] if hint else "no hint line in the log"})
    return checks


def inprocess_checks(host: str, py: str, device: str) -> list[dict]:
    checks = []
    r = run_child("lazy_adaln", py, host, device)
    if "error" in r:
        checks.append({"check": "5 lazy adaLN in process", "result": "FAIL", "detail": r["error"]})
    else:
        res, low = r["resident"], r["lowvram"]
        tol = 1e-4 * max(1.0, res["reused_step_scale"])
        ok_res = res["row_slices"] > 0 and res["reasons"] == ["None"] and res["computed_step_max_abs_diff_to_host"] == 0
        ok_low = (low["row_slices"] == 0 and all("cast on the fly" in x for x in low["reasons"])
                  and low["computed_step_max_abs_diff_to_host"] == 0
                  and low["reused_step_max_abs_diff_to_resident"] <= tol)
        checks.append({"check": f"5a lazy adaLN, weights resident on {r['device']}", "result": "pass" if ok_res else "FAIL",
                       "detail": f"{res['row_slices']} gate-row slices; computed step vs host max |diff| "
                                 f"{res['computed_step_max_abs_diff_to_host']:.3g} (0 expected)"})
        checks.append({"check": "5b lazy adaLN, host low-VRAM loader (cast on the fly)",
                       "result": "pass" if ok_low else "FAIL",
                       "detail": f"{low['row_slices']} row slices (0 expected); why: {', '.join(low['reasons'])}; "
                                 f"computed step vs host {low['computed_step_max_abs_diff_to_host']:.3g}; reused step "
                                 f"vs resident weights {low['reused_step_max_abs_diff_to_resident']:.3g} (<= {tol:.3g})"})
    r = run_child("multigpu", py, host, device)
    if "skipped" in r:
        checks.append({"check": "6 multi-GPU CFG split", "result": "skipped", "detail": r["skipped"]})
    elif "error" in r:
        checks.append({"check": "6 multi-GPU CFG split", "result": "FAIL", "detail": r["error"]})
    else:
        tol = 1e-3 * max(1.0, r["scale"])
        ok = (len(r["worker_devices"]) == 2 and all(a or b for a, b in r["worker_on_own_model"].values())
              and all(n > 0 for n in r["cached_steps"]) and r["max_abs_diff_to_single"] <= tol)
        checks.append({"check": "6 multi-GPU CFG split", "result": "pass" if ok else "FAIL",
                       "detail": f"workers on {', '.join(r['worker_devices'])} (own model: {r['worker_on_own_model']}); "
                                 f"cached steps per device {r['cached_steps']}; vs single device max |diff| "
                                 f"{r['max_abs_diff_to_single']:.3g} (<= {tol:.3g}); {r['seconds']} s"})
    return checks


# ------------------------------------------------------------------------------------------------ main

def pick_host(args) -> tuple[str, str]:
    if args.host:
        return str(Path(args.host).resolve()), args.host_py or str(ROOT / ".venv" / "bin" / "python")
    if os.environ.get("PROCACHE_HOST"):
        return os.environ["PROCACHE_HOST"], os.environ.get("PROCACHE_HOST_PY") or str(ROOT / ".venv" / "bin" / "python")
    best = None
    lst = ROOT / ".host" / "matrix" / "hosts.txt"
    if lst.is_file():
        for line in lst.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                v = host_version(parts[1])
                key = tuple(int(x) for x in re.findall(r"\d+", v)[:3])
                if best is None or key > best[0]:
                    best = (key, parts[1], parts[2])
    if best:
        return best[1], best[2]
    return str(ROOT / ".host" / "ComfyUI"), str(ROOT / ".venv" / "bin" / "python")


def host_version(tree: str) -> str:
    m = re.search(r'__version__ = "(.*)"', (Path(tree) / "comfyui_version.py").read_text()) \
        if (Path(tree) / "comfyui_version.py").is_file() else None
    return m.group(1) if m else "unknown"


def write_md(path: Path, checks: list[dict], meta: dict) -> None:
    lines = ["# GPU checks (`python -m benchmarks.gpu_checks`, part of `make bench` on CUDA)", "",
             "The CUDA-only code paths of ProCache against the real host; the checks are described in the "
             "docstring of benchmarks/gpu_checks.py.", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in meta.items()]
    lines += ["", "| check | result | what was seen |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['result']} | {c['detail'].replace('|', '/')} |" for c in checks]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", help="ComfyUI tree (default: the newest matrix host, else .host/ComfyUI)")
    ap.add_argument("--host-py", help="that host's python (with --host)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plumbing-on-cpu", action="store_true",
                    help="run the steps on the CPU to check this script (no results written)")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(CHILDREN[args.child](args.device, args.host)), flush=True)
        return 0
    import torch

    if not args.plumbing_on_cpu and not torch.cuda.is_available():
        print("[gpu-checks] needs CUDA: torch.cuda.is_available() is False on this machine, so nothing was run "
              f"and {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} was not written "
              "(run `make bench` or `python -m benchmarks.gpu_checks` on a CUDA machine).", flush=True)
        return 0
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import head_commit

    commit = head_commit()   # the code measured: read before the run (the one stamp rule of benchmarks.common)
    host, py = pick_host(args)
    os.environ["PROCACHE_HOST"], os.environ["PROCACHE_HOST_PY"] = host, py   # read by comfy_client at import
    sys.path.insert(0, str(ROOT / "scripts"))
    device = "cpu" if args.plumbing_on_cpu else "cuda"
    t0 = time.monotonic()
    print(f"[gpu-checks] ComfyUI {host_version(host)} at {host} ({py}), device {device}", flush=True)
    checks = server_checks(host, py, cpu=args.plumbing_on_cpu)
    checks += inprocess_checks(host, py, device)
    for c in checks:
        print(f"[gpu-checks] {c['result']:>7}  {c['check']}: {c['detail']}", flush=True)
    secs = round(time.monotonic() - t0, 1)
    failed = [c for c in checks if c["result"] == "FAIL"]
    print(f"[gpu-checks] {len(checks) - len(failed)} of {len(checks)} not failed in {secs} s", flush=True)
    if args.plumbing_on_cpu:
        print("[gpu-checks] --plumbing-on-cpu: no results written", flush=True)
        return 1 if failed else 0
    aimdo = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('comfy-aimdo'))"],
                           capture_output=True, text=True).stdout.strip() or "not installed"
    meta = {"ComfyUI": host_version(host), "GPU": ", ".join(torch.cuda.get_device_name(i)
                                                            for i in range(torch.cuda.device_count())),
            "torch": torch.__version__, "comfy-aimdo": aimdo, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": secs}
    write_md(args.out, checks, meta)
    print(f"[gpu-checks] wrote {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
