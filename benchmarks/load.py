"""`make bench-load`: does the UI's traffic stall sampling, and does sampling stall the UI?

On the real server (loopback only), a ProCache sampling run of the tiny PixArt-α executes while a client
pool sends the requests the ProCache UI sends (preset list, preview, save with overwrite) at a fixed
rate. Recorded: requests served, p50/p99 latency per kind, errors, and the slowdown of the sampling run
(the pack's own "sampling X s" figure from the server log) against the same run without traffic. Runs
with and without traffic are interleaved (quiet, loaded, quiet, loaded, ...) so drift from other
processes on a shared machine hits both alike; medians are compared.

    python -m benchmarks.load [--pairs 3] [--steps 10] [--rate 5] [--workers 4]

Writes benchmarks/results/load_cpu.md, raw/load_cpu.json and the reliability section of
benchmarks/results/README.md. Targets (a benchmark, not a test): 0 errors, p99 < 100 ms for list and
preview, sampling slowed < 5 %.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from .common import block_marks, raw_stamp, write_readme_block

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_client import COMFY_DIR, VENV_PY, ComfyServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PIXART = "procache-tiny-pixart-alpha.safetensors"
SCHEDULE = "FCSCFCSCFF"
KINDS = ("list", "preview", "save")
_SAMPLING_RE = re.compile(r"ProCache \[\w+\] run: .*sampling ([\d.]+) s")


def sampling_prompt(steps: int, seed: int, schedule: str = SCHEDULE, prefix: str = "load") -> dict:
    """Tiny PixArt-α, 512 px, CFG 2, euler, the pack's Schedule Loader + Selective Settings + Apply."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": PIXART, "weight_dtype": "default"}},
        "pos": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 1, "tokens": 8, "dim": 4096, "pooled_dim": 0, "scale": 1.0}},
        "neg": {"class_type": "ProCacheTestConditioning",
                "inputs": {"seed": 2, "tokens": 8, "dim": 4096, "pooled_dim": 0, "scale": 1.0}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "schedule": {"class_type": "ProCacheScheduleLoader",
                     "inputs": {"preset": "pixart-alpha-dpm20-paper", "schedule_text": schedule}},
        "selective": {"class_type": "ProCacheSelectiveSettings", "inputs": {
            "enabled": True, "depth_fraction": 0.5, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
            "w_output_norm": 0.25, "w_spatial": 0.5}},
        "apply": {"class_type": "ProCacheApply", "inputs": {"model": ["unet", 0], "schedule": ["schedule", 0],
                                                            "selective": ["selective", 0]}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": seed, "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix}},
    }


# -- the UI's traffic ----------------------------------------------------------------------------------
def _request(session: requests.Session, base: str, kind: str, i: int, worker: int) -> requests.Response:
    if kind == "list":
        return session.get(base + "/procache/presets", timeout=30)
    if kind == "preview":
        if i % 2:
            return session.get(base + "/procache/preview",
                               params={"preset": "pixart-alpha-dpm20-paper", "steps": 10 + i % 40}, timeout=30)
        return session.post(base + "/procache/preview", json={"text": "F C S C F C S C F", "steps": 10 + i % 40,
                                                              "selective": {"enabled": True, "ratio": 0.3}},
                            timeout=30)
    acts = "F" + "CS"[i % 2] + "C" * (i % 5) + "F"
    return session.post(base + "/procache/presets", json={"name": f"load-ui-{worker}", "actions": acts,
                                                          "family": "pixart", "overwrite": True}, timeout=30)


def run_traffic(base: str, rate: float, stop: threading.Event, workers: int = 4,
                mix: tuple[str, ...] = ("list", "preview", "preview", "save", "list")) -> list[dict[str, Any]]:
    """Sends ``rate`` requests per second (open loop: send times are fixed in advance, so a slow server
    is not given a break) from ``workers`` threads until ``stop`` is set; one record per request."""
    tasks: queue.Queue = queue.Queue()
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        with requests.Session() as s:
            while True:
                item = tasks.get()
                if item is None:
                    return
                i, kind, due = item
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                rec: dict[str, Any] = {"kind": kind, "late_ms": max(0.0, (t0 - due) * 1e3), "t0": t0}
                try:
                    r = _request(s, base, kind, i, w)
                    # latency: sent until the whole answer is in (parsing it is the client's own work)
                    rec["ms"] = (time.perf_counter() - t0) * 1e3
                    rec["headers_ms"] = r.elapsed.total_seconds() * 1e3  # sent until the headers were in
                    rec["status"] = r.status_code
                    rec["ok"] = r.status_code < 300 and isinstance(r.json(), dict)
                    if not rec["ok"]:
                        rec["error"] = r.text[:200]
                except Exception as exc:  # a refused connection or a timeout is an error too
                    rec.update(status=None, ok=False, error=f"{type(exc).__name__}: {exc}"[:200])
                rec.setdefault("ms", (time.perf_counter() - t0) * 1e3)
                rec["t1"] = t0 + rec["ms"] / 1e3
                if rec.get("status") is not None:
                    rec.update(server_timing(r.headers.get("Server-Timing", "")))
                with lock:
                    records.append(rec)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    i = 0
    while not stop.is_set():
        due = t_start + i / rate
        if due - time.perf_counter() > 0.05:
            stop.wait(min(0.05, due - time.perf_counter() - 0.01))
            continue
        tasks.put((i, mix[i % len(mix)], due))
        i += 1
    for _ in threads:
        tasks.put(None)
    for t in threads:
        t.join(60)
    return records


def server_timing(header: str) -> dict[str, float]:
    """{"handler_ms", "cpu_ms", "runqueue_ms"} from the routes' Server-Timing header (what is there)."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        try:
            out[f"{name}_ms"] = float(rest)
        except ValueError:
            continue
    return out


def gc_overlap(records: list[dict[str, Any]], pauses: list[list[float]]) -> None:
    """Adds ``gc_ms`` to each record: how long the server's GC pauses overlapped the request (sent to answer
    read), exactly, from the pauses' start and duration on the same monotonic clock as the client's."""
    spans = sorted((p[0], p[0] + p[1] / 1e3) for p in pauses)
    for r in records:
        if "t0" not in r:
            continue
        r["gc_ms"] = 1e3 * sum(max(0.0, min(r["t1"], b) - max(r["t0"], a)) for a, b in spans
                               if a < r["t1"] and b > r["t0"])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q / 100.0 * (len(v) - 1)))))
    return v[k]


def summarize_traffic(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": len(records), "errors": sum(not r["ok"] for r in records)}
    for kind in KINDS:
        ms = [r["ms"] for r in records if r["kind"] == kind]
        out[kind] = {"n": len(ms), "errors": sum(not r["ok"] for r in records if r["kind"] == kind),
                     "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": max(ms) if ms else None}
        # where the time of a request went: the handler itself (wall, CPU of the event-loop thread in it,
        # its wait for a CPU) and everything outside the handler (queued in the loop, transport, client)
        for part in ("handler", "cpu", "runqueue", "body", "save_thread", "save_thread_cpu"):
            v = [r[f"{part}_ms"] for r in records if r["kind"] == kind and f"{part}_ms" in r]
            out[kind][f"{part}_p50_ms"], out[kind][f"{part}_p99_ms"] = pct(v, 50), pct(v, 99)
        # neither working nor waiting for a CPU inside the handler: waiting for the GIL (or I/O)
        other = [r["handler_ms"] - r["cpu_ms"] - r["runqueue_ms"] for r in records
                 if r["kind"] == kind and "runqueue_ms" in r and "cpu_ms" in r]
        out[kind]["gil_or_io_p50_ms"], out[kind]["gil_or_io_p99_ms"] = pct(other, 50), pct(other, 99)
        body = [r["ms"] - r["headers_ms"] for r in records if r["kind"] == kind and "headers_ms" in r]
        out[kind]["after_headers_p50_ms"], out[kind]["after_headers_p99_ms"] = pct(body, 50), pct(body, 99)
        outside = [r["ms"] - r["handler_ms"] for r in records if r["kind"] == kind and "handler_ms" in r]
        out[kind]["outside_p50_ms"], out[kind]["outside_p99_ms"] = pct(outside, 50), pct(outside, 99)
        # the slowest 1 %: how much of it was the handler
        slow = sorted((r for r in records if r["kind"] == kind and "handler_ms" in r), key=lambda r: -r["ms"])
        slow = slow[:max(1, len(slow) // 100)]
        out[kind]["slowest"] = [{k: round(r[k], 2) for k in ("ms", "headers_ms", "handler_ms", "cpu_ms", "runqueue_ms",
                                                            "late_ms", "gc_ms")
                                 if k in r} for r in slow]
        # what the GC pauses that overlapped each request explain (exact overlap, when the pauses were fetched)
        with_gc = [r for r in records if r["kind"] == kind and "gc_ms" in r]
        if with_gc:
            out[kind]["p99_without_gc_ms"] = pct([r["ms"] - r["gc_ms"] for r in with_gc], 99)
            slow100 = [r for r in with_gc if r["ms"] >= 100.0]
            out[kind]["over_100ms"] = len(slow100)
            out[kind]["over_100ms_with_gc"] = sum(r["gc_ms"] > 0 for r in slow100)
            out[kind]["over_100ms_gc_share"] = (sum(r["gc_ms"] for r in slow100) / sum(r["ms"] for r in slow100)
                                                if slow100 else None)
    out["error_samples"] = [r["error"] for r in records if not r["ok"]][:5]
    # the server's cyclic-GC pauses over these requests (running totals in the Server-Timing header)
    gc_recs = [r for r in records if "gc_total_ms" in r]
    if gc_recs:
        out["gc"] = {"pauses": max(r["gc_count_ms"] for r in gc_recs) - min(r["gc_count_ms"] for r in gc_recs),
                     "pause_ms": max(r["gc_total_ms"] for r in gc_recs) - min(r["gc_total_ms"] for r in gc_recs),
                     "longest_so_far_ms": max(r["gc_max_ms"] for r in gc_recs)}
    return out


# -- sampling runs ----------------------------------------------------------------------------------
def timed_run(srv: ComfyServer, steps: int, seed: int) -> float:
    """One sampling run; the pack's own sampling time from its log line (excludes queueing/loading)."""
    client = srv.client()
    before = len(_SAMPLING_RE.findall(srv.log()))
    client.run(sampling_prompt(steps, seed, prefix=f"load{seed}"), timeout=1800)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = _SAMPLING_RE.findall(srv.log())
        if len(found) > before:
            return float(found[-1])
        time.sleep(0.1)
    raise RuntimeError("no ProCache run line in the server log")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pairs: int, steps: int, rate: float, workers: int, idle_s: float, gc_freeze: bool = True) -> dict[str, Any]:
    """One server: warm-up, idle traffic, then ``pairs`` quiet/loaded run pairs. ``gc_freeze`` False starts it
    with PROCACHE_GC_FREEZE=0 (the interpreter's default collector, what the pack did before)."""
    subprocess.run([str(VENV_PY), str(ROOT / "scripts" / "make_tiny_models.py"), "--comfy", str(COMFY_DIR)], check=True)
    os.environ["PROCACHE_ROUTE_TIMING"] = "1"  # the routes add their run-queue wait to Server-Timing
    os.environ["PROCACHE_GC_FREEZE"] = "1" if gc_freeze else "0"
    load_start = os.getloadavg()
    with ComfyServer() as srv:
        base = srv.base_url
        timed_run(srv, 2, 999)  # warm-up: model load, first-call costs
        # the traffic alone, server idle: what the UI gets when nothing samples
        stop = threading.Event()
        timer = threading.Timer(idle_s, stop.set)
        timer.start()
        cpu0 = cpu_seconds(srv.proc.pid)
        idle_recs = run_traffic(base, rate, stop, workers)
        # what serving costs the server, whatever else the machine does: CPU time per request
        idle_cpu_s = cpu_seconds(srv.proc.pid) - cpu0
        quiet, loaded, during = [], [], []
        windows: list[tuple[float, float]] = []  # the loaded runs, sent to traffic stopped
        loads: list[float] = []
        cpu = {"quiet_server_s": [], "loaded_server_s": [], "loaded_client_s": []}
        for k in range(pairs):
            c0 = cpu_seconds(srv.proc.pid)
            quiet.append(timed_run(srv, steps, 2 * k))
            cpu["quiet_server_s"].append(cpu_seconds(srv.proc.pid) - c0)
            c0, cc0 = cpu_seconds(srv.proc.pid), time.process_time()
            stop = threading.Event()
            box: dict[str, Any] = {}
            th = threading.Thread(target=lambda: box.update(recs=run_traffic(base, rate, stop, workers)))
            th.start()
            w0 = time.perf_counter()
            try:
                loaded.append(timed_run(srv, steps, 2 * k + 1))
            finally:
                stop.set()
                th.join()
                windows.append((w0, time.perf_counter()))
            cpu["loaded_server_s"].append(cpu_seconds(srv.proc.pid) - c0)
            cpu["loaded_client_s"].append(time.process_time() - cc0)
            during += box.get("recs", [])
            loads.append(round(os.getloadavg()[0], 2))
            print(f"pair {k + 1}/{pairs}: quiet {quiet[-1]:.2f} s, with traffic {loaded[-1]:.2f} s", flush=True)
        alive = requests.get(base + "/system_stats", timeout=30).ok
        pauses = requests.get(base + "/procache/timing/gc", timeout=30).json()["pauses"]
        frozen = re.findall(r"ProCache: (\d+) start-up objects moved out", srv.log())
    gc_overlap(idle_recs + during, pauses)
    in_runs = [p for p in pauses if any(a <= p[0] <= b for a, b in windows)]
    idle = summarize_traffic(idle_recs)
    idle["server_cpu_ms_per_request"] = 1e3 * idle_cpu_s / max(1, idle["requests"])
    q, l_ = statistics.median(quiet), statistics.median(loaded)
    return {"steps": steps, "schedule": SCHEDULE, "pairs": pairs, "rate_per_s": rate, "workers": workers,
            "quiet_s": quiet, "loaded_s": loaded, "quiet_median_s": q, "loaded_median_s": l_,
            "slowdown": l_ / q - 1.0, "during": summarize_traffic(during), "idle": idle, "server_alive_after": alive,
            "cpu": cpu, "loadavg_start": [round(x, 2) for x in load_start], "loadavg_1min_after_pairs": loads,
            "gc_freeze": gc_freeze, "frozen_objects": int(frozen[-1]) if frozen else 0,
            "gc_pauses_loaded_runs": _pause_stats(in_runs), "gc_pauses_since_start": _pause_stats(pauses)}


def _pause_stats(pauses: list[list[float]]) -> dict[str, Any]:
    return {"count": len(pauses), "total_ms": round(sum(p[1] for p in pauses), 1),
            "max_ms": max((p[1] for p in pauses), default=0.0),
            "by_generation": {str(g): [sum(1 for p in pauses if p[2] == g),
                                       round(sum(p[1] for p in pauses if p[2] == g), 1)] for g in (0, 1, 2)}}


# -- report -----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return {"cpu_count": os.cpu_count(), "loadavg_1_5_15": load, "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_commit": commit}


def _f(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def load_markdown(res: dict[str, Any], info: dict[str, Any],
                  title: str = "UI traffic during sampling (`make bench-load`)") -> str:
    d, i = res["during"], res["idle"]
    worst = max((d[k]["p99_ms"] or 0.0) for k in ("list", "preview"))
    verdict = [
        f"errors during sampling: {d['errors']} ({'meets' if d['errors'] == 0 else 'MISSES'} the target 0)",
        f"p99 list/preview during sampling: {worst:.1f} ms ({'meets' if worst < 100 else 'MISSES'} the target < 100 ms)",
        f"sampling slowed by {100 * res['slowdown']:+.1f} % ({'meets' if res['slowdown'] < 0.05 else 'MISSES'} "
        "the target < 5 %)",
    ]
    rows = []
    for label, s in (("during sampling", d), ("server idle", i)):
        for k in KINDS:
            rows.append(f"| {label} | {k} | {s[k]['n']} | {s[k]['errors']} | {_f(s[k]['p50_ms'])} | "
                        f"{_f(s[k]['p99_ms'])} | {_f(s[k]['max_ms'])} |")
    lines = [
        f"## {title}", "",
        f"Real server on loopback, tiny PixArt-α (4 blocks, hidden 1152) at 512 px, {res['steps']} euler steps, CFG 2, "
        f"schedule `{res['schedule']}` + Selective Compute Settings. A pool of {res['workers']} client threads sends "
        f"the UI's requests at a fixed {res['rate_per_s']:g} requests/s (open loop; mix list, preview x2, save with "
        f"overwrite, list) while the run samples; {res['pairs']} runs with and {res['pairs']} without traffic, "
        "interleaved; sampling time is the pack's own figure (server log), medians compared.", "",
        *[f"- {v}" for v in verdict], "",
        f"Sampling: without traffic {res['quiet_median_s']:.2f} s (runs {', '.join(f'{x:.2f}' for x in res['quiet_s'])}), "
        f"with traffic {res['loaded_median_s']:.2f} s (runs {', '.join(f'{x:.2f}' for x in res['loaded_s'])}). "
        f"Server answered after the runs: {res['server_alive_after']}. Serving cost the idle server "
        f"{res['idle']['server_cpu_ms_per_request']:.1f} ms of CPU time per request (all kinds, process CPU time), "
        f"i.e. {res['rate_per_s'] * res['idle']['server_cpu_ms_per_request'] / 10.0:.1f} % of one core at this rate.", "",
        "| when | request | served | errors | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|", *rows, "",
        "Where the time of a request went during sampling (from the routes' Server-Timing header: the handler's "
        "wall time, the event-loop thread's CPU time and run-queue wait inside it; outside = client-measured "
        "time minus handler time: waiting in the event loop, HTTP, the client's own scheduling), p50 / p99 in ms:", "",
        "| request | total | handler | handler CPU | run-queue wait | rest of handler (GIL, I/O) | outside handler |",
        "|---|---|---|---|---|---|---|",
        *[f"| {k} | {_f(d[k]['p50_ms'])} / {_f(d[k]['p99_ms'])} | {_f(d[k].get('handler_p50_ms'))} / "
          f"{_f(d[k].get('handler_p99_ms'))} | {_f(d[k].get('cpu_p50_ms'))} / {_f(d[k].get('cpu_p99_ms'))} | "
          f"{_f(d[k].get('runqueue_p50_ms'))} / {_f(d[k].get('runqueue_p99_ms'))} | "
          f"{_f(d[k].get('gil_or_io_p50_ms'))} / {_f(d[k].get('gil_or_io_p99_ms'))} | "
          f"{_f(d[k].get('outside_p50_ms'))} / {_f(d[k].get('outside_p99_ms'))} |" for k in KINDS], "",
        "Outside the handler, the part after the answer's headers arrived (the client reading the body), p50 / p99 "
        "ms: " + ", ".join(f"{k} {_f(d[k].get('after_headers_p50_ms'))} / {_f(d[k].get('after_headers_p99_ms'))}"
                            for k in KINDS) + ".", "",
        *([f"A save reads its body ({_f(d['save'].get('body_p50_ms'))} / {_f(d['save'].get('body_p99_ms'))} ms, awaited: "
           "the event loop serves others meanwhile), then does its work and file I/O on the pack's save thread "
           f"({_f(d['save'].get('save_thread_p50_ms'))} / {_f(d['save'].get('save_thread_p99_ms'))} ms wall, "
           f"{_f(d['save'].get('save_thread_cpu_p50_ms'))} / {_f(d['save'].get('save_thread_cpu_p99_ms'))} ms CPU), "
           "off the event loop.", ""] if d["save"].get("save_thread_p50_ms") is not None else []),
        *_gc_lines(res),
        *_cpu_lines(res),
        f"Machine: {info['cpu_count']} CPU cores, load average {_load(res.get('loadavg_start'))} at the start and "
        f"{info['loadavg_1_5_15']} at the end (1/5/15 min; 1-min after each pair: "
        f"{', '.join(f'{x:.1f}' for x in res.get('loadavg_1min_after_pairs', [])) or 'n/a'}), "
        f"{info['date_utc']}, commit {info['git_commit']}. The client pool runs on the same cores as the server; "
        "on this shared machine other jobs ran at the same time, so the absolute figures are noisy; the "
        "interleaving keeps the comparison fair.", ""]
    if d["error_samples"]:
        lines += ["Errors seen: " + "; ".join(f"`{e}`" for e in d["error_samples"]), ""]
    return "\n".join(lines)


def _gc_lines(res: dict[str, Any]) -> list[str]:
    """What the server's cyclic-GC pauses cost the requests (exact overlap of each pause with each request)."""
    g = res.get("gc_pauses_loaded_runs")
    if not g:
        return []
    d = res["during"]
    mode = (f"start-up heap frozen ({res['frozen_objects']:,} objects; PROCACHE_GC_FREEZE=1, the default)"
            if res.get("gc_freeze") else "the interpreter's default collector (PROCACHE_GC_FREEZE=0)")
    gen2 = g["by_generation"]["2"]
    slow = "; ".join(f"{k} {d[k].get('over_100ms', 0)} ({d[k].get('over_100ms_with_gc', 0)} overlapped a pause, "
                     f"{_f(100 * d[k]['over_100ms_gc_share'] if d[k].get('over_100ms_gc_share') is not None else None, 0)} "
                     "% of their time in pauses)" for k in KINDS)
    return [f"Garbage collector: {mode}. During the loaded runs it paused the server {g['count']} times, "
            f"{g['total_ms']:.0f} ms in all, longest {g['max_ms']:.0f} ms (full collections: {gen2[0]}, {gen2[1]:.0f} ms). "
            f"Requests of 100 ms or more during sampling: {slow}. p99 with the pause time each request overlapped "
            "taken out: " + ", ".join(f"{k} {_f(d[k].get('p99_without_gc_ms'))} ms" for k in KINDS) + ".", ""]


def _load(values: Any) -> str:
    return " ".join(f"{x:.1f}" for x in values) if values else "n/a"


def _cpu_lines(res: dict[str, Any]) -> list[str]:
    """Server and client CPU seconds per run: what the traffic took from the two cores."""
    cpu = res.get("cpu")
    if not cpu:
        return []
    q, l_, c = (statistics.median(cpu[k]) for k in ("quiet_server_s", "loaded_server_s", "loaded_client_s"))
    return [f"CPU time per run (medians): server {q:.1f} s without traffic, {l_:.1f} s with it (+{l_ - q:.1f} s "
            f"serving); the client pool {c:.1f} s. Sampling uses both cores, so every CPU second the traffic "
            "takes (server and client alike) is taken from it.", ""]


SECTION_START, SECTION_END = block_marks("reliability")


def update_readme_section(name: str, text: str) -> None:
    """Keeps benchmarks/results/sections/<name>.md and the README's reliability block in step."""
    sec = RESULTS / "sections"
    sec.mkdir(parents=True, exist_ok=True)
    (sec / f"{name}.md").write_text(text)
    block = "\n".join([SECTION_START, "# Reliability", "",
                       "Produced by `make bench-load` (benchmarks/load.py) and `make bench-faults` "
                       "(benchmarks/faults.py); details in load_cpu.md and faults_cpu.md.", ""]
                      + [p.read_text() for p in sorted(sec.glob("*.md"))] + [SECTION_END])
    write_readme_block(RESULTS / "README.md", SECTION_START, SECTION_END, block, at_end=True)


def compare_markdown(runs: dict[str, dict[str, Any]]) -> str:
    """One row per collector setting: the targets side by side."""
    rows = []
    for key, label in (("gc_freeze_on", "start-up heap frozen (default)"), ("gc_freeze_off", "interpreter default (PROCACHE_GC_FREEZE=0)")):
        r = runs.get(key)
        if r is None:
            continue
        d, g = r["during"], r["gc_pauses_loaded_runs"]
        rows.append(f"| {label} | {_f(d['list']['p99_ms'])} | {_f(d['preview']['p99_ms'])} | {_f(d['save']['p99_ms'])} | "
                    f"{d['errors']} | {100 * r['slowdown']:+.1f} % | {g['count']} / {g['total_ms']:.0f} ms / {g['max_ms']:.0f} ms |")
    return "\n".join([
        "## Cyclic garbage collector: frozen start-up heap vs the interpreter's default", "",
        " ".join(dict.fromkeys(raw_stamp(r, "python -m benchmarks.load") for r in runs.values() if isinstance(r, dict)))
        + " Two servers, one after the other, same settings (below); during sampling:", "",
        "| collector | list p99 ms | preview p99 ms | save p99 ms | errors | sampling slowed | GC pauses in loaded runs (count / total / longest) |",
        "|---|---|---|---|---|---|---|", *rows, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="runs with and without traffic (each)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rate", type=float, default=5.0,
                    help="requests per second from the client pool (a busy user in the UI sends a few per second)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="traffic against the idle server first")
    ap.add_argument("--gc-freeze", choices=("both", "on", "off"), default="both",
                    help="the server's collector: frozen start-up heap (the pack's default), the interpreter's "
                         "default, or both one after the other")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}
    for mode in (("off", "on") if args.gc_freeze == "both" else (args.gc_freeze,)):
        print(f"-- server with PROCACHE_GC_FREEZE={'1' if mode == 'on' else '0'}", flush=True)
        runs[f"gc_freeze_{mode}"] = measure(args.pairs, args.steps, args.rate, args.workers, args.idle_seconds,
                                            gc_freeze=mode == "on")
    info = machine()
    for r in runs.values():
        r["machine"] = info
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / "load_cpu.json").write_text(json.dumps(runs, indent=1))
    main_run = runs.get("gc_freeze_on") or runs["gc_freeze_off"]
    parts = [compare_markdown(runs)] if len(runs) > 1 else []
    parts.append(load_markdown(main_run, info))
    text = "\n".join(parts)
    full = [text]
    if "gc_freeze_on" in runs and "gc_freeze_off" in runs:
        full.append(load_markdown(runs["gc_freeze_off"], info, title="Same, with the interpreter's default collector "
                                                                     "(PROCACHE_GC_FREEZE=0)"))
    notes = args.out / "notes" / "load.md"
    if notes.exists():
        full.append(notes.read_text())
    (args.out / "load_cpu.md").write_text("# ProCache load benchmark (CPU)\n\n" + "\n".join(full))
    if args.out == RESULTS:
        update_readme_section("load", text)
    print("\n".join(full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
