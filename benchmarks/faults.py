"""`make bench-faults`: faults injected through the real server, and whether every run recovered.

Scenarios (each counts faults injected, runs that recovered, data lost):

* interrupts   n interrupts in a row at chosen points of a ProCache run (the first inside the first full
               step, the second inside a selective step, the rest at seeded random evaluations/blocks),
               each followed by the same prompt without the fault: it must equal a fresh run bitwise.
               The interrupt is the host's own flag (what POST /interrupt sets), raised at a known place
               by the test node ProCacheTestInterruptAt (tests/host_nodes/nodes_interrupt_at.py).
* queued       a user preset replaced (through the UI's save with overwrite, and by a plain rewrite of
               the file) or deleted while a run that uses it waits in the queue: the run uses what the
               file holds when it starts (equal to a fresh run of that schedule) or fails with a
               ProCache error naming 'preset'; the next run equals a fresh run.
* two-schedules two runs of one MODEL patched by two Applies with different schedules, queued back to
               back, and both in one prompt: each equals its fresh run.
* read-only    the user preset folder made read-only (server without the root capabilities that ignore
               file modes): saving answers 403 naming the folder, listing and running user presets still
               work, and saving works again once the folder is writable.
* restart      the server killed (SIGKILL) while the UI saves over a preset, plus a half-written
               temporary file left in the folder: after a restart the preset is one of the versions
               saved, whole; the temporary file is gone; a run using it equals a fresh run.

Runs use the host's Flux class at a tiny size (hidden 256, 2 double + 2 single blocks, 256 px, 8 euler
steps, schedule FCSCFCSF + Selective Compute Settings), so a run costs about a second on a CPU.

    python -m benchmarks.faults [--interrupts 20] [--restarts 3] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests" / "host")]
from comfy_client import ComfyClient, ComfyServer, load_latent  # noqa: E402
from workflows import flux_conditioning, sample_and_save  # noqa: E402  (shared prompt builders)

RESULTS = ROOT / "benchmarks" / "results"
ACTIONS = "FCSCFCSF"
OTHER = "FCCFCSFF"
STEPS = 8
CTX = 64
N_BLOCKS = 4  # tiny Flux: 2 double + 2 single blocks (ProCacheTestInterruptAt counts them in this order)


def flux_prompt(prefix: str, text: str = "", preset: str = "pixart-alpha-dpm20-paper", seed: int = 0,
                fault: tuple[int, int] | None = None, width: int = 256, steps: int = STEPS,
                procache: bool = True) -> dict:
    """Tiny Flux + Schedule Loader + Selective Compute Settings + Apply (+ a fault) + KSampler + SaveLatent."""
    p: dict[str, dict] = {
        "flux": {"class_type": "ProCacheTestTinyFlux",
                 "inputs": {"seed": 5, "depth": 2, "depth_single_blocks": 2, "context_in_dim": CTX}},
        **flux_conditioning(CTX),
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": width, "batch_size": 1}},
        **sample_and_save("flux", positive="guid", prefix=prefix, seed=seed, steps=steps, cfg=1.0),
    }
    if procache:
        p["schedule"] = {"class_type": "ProCacheScheduleLoader", "inputs": {"preset": preset, "schedule_text": text}}
        p["selective"] = {"class_type": "ProCacheSelectiveSettings", "inputs": {
            "enabled": True, "depth_fraction": 0.5, "ratio": 0.3, "w_staleness": 1.0, "w_input_change": 1.0,
            "w_output_norm": 0.25, "w_spatial": 0.5}}
        p["apply"] = {"class_type": "ProCacheApply", "inputs": {"model": ["flux", 0], "schedule": ["schedule", 0],
                                                                "selective": ["selective", 0]}}
        p["sampler"]["inputs"]["model"] = ["apply", 0]
    if fault is not None:
        src = p["sampler"]["inputs"]["model"]
        p["fault"] = {"class_type": "ProCacheTestInterruptAt",
                      "inputs": {"model": src, "at_eval": fault[0], "block": fault[1]}}
        p["sampler"]["inputs"]["model"] = ["fault", 0]
    return p


def spell(actions: str, i: int) -> str:
    """The ``i``-th distinct spelling of one schedule (separators are ignored by the Schedule Loader), so
    the host re-runs a prompt it would otherwise serve from its cache."""
    seps = [" ", ",", "_", "|", "-", "  ", " ,", ", "]
    if i == 0:
        return actions
    i -= 1
    pos = 1 + (i // len(seps)) % (len(actions) - 1)
    extra = " " * (i // (len(seps) * (len(actions) - 1)))
    return actions[:pos] + seps[i % len(seps)] + actions[pos:] + extra


def latent_of(client: ComfyClient, entry: dict):
    files = client.output_files(entry, "latents")
    if len(files) != 1:
        raise AssertionError(f"expected one latent, got {entry.get('outputs')}")
    return load_latent(files[0])


def run_latent(client: ComfyClient, prompt: dict):
    return latent_of(client, client.run(prompt, timeout=900))


def interrupted(entry: dict) -> bool:
    return entry["status"]["status_str"] == "error" and any(
        k == "execution_interrupted" for k, _ in entry["status"].get("messages", []))


def exec_error(entry: dict) -> str:
    for k, d in entry["status"].get("messages", []):
        if k == "execution_error":
            return d.get("exception_message", "")
    return ""


@dataclass
class Tally:
    name: str
    injected: int = 0
    recovered: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"scenario": self.name, "faults_injected": self.injected, "runs_recovered": self.recovered,
                "data_lost": self.lost, "notes": self.notes}


def presets_dir(srv: ComfyServer) -> Path:
    return Path(srv.workdir) / "user" / "procache_presets"


def leftovers(srv: ComfyServer) -> list[str]:
    d = presets_dir(srv)
    return sorted(p.name for p in d.glob(".tmp*")) if d.is_dir() else []


def save_preset(client: ComfyClient, name: str, actions: str) -> requests.Response:
    return client.post("/procache/presets", json={"name": name, "actions": actions, "family": "flux",
                                                  "overwrite": True})


# -- scenarios ----------------------------------------------------------------------------------------
def interrupts(client: ComfyClient, n: int, seed: int = 0) -> Tally:
    t = Tally("interrupt at a random step, then the same prompt again")
    rng = random.Random(seed)
    fresh = run_latent(client, flux_prompt("fi_ref", spell(ACTIONS, 0)))
    first_s = ACTIONS.index("S")
    targets = [(0, 1), (first_s, N_BLOCKS - 2)] + [(rng.randrange(STEPS), rng.randrange(-1, N_BLOCKS))
                                                  for _ in range(max(0, n - 2))]
    for i, (at, block) in enumerate(targets[:n]):
        text = spell(ACTIONS, 1 + i)
        t.injected += 1
        entry = client.run(flux_prompt(f"fi_fault{i}_", text, fault=(at, block)), timeout=900, raise_on_error=False)
        where = f"eval {at} ({ACTIONS[at]}), block {block}"
        if not interrupted(entry):
            t.notes.append(f"#{i} {where}: not interrupted ({entry['status']['status_str']})")
        if client.output_files(entry, "latents"):
            t.lost += 1
            t.notes.append(f"#{i}: the interrupted run wrote an output")
        again = run_latent(client, flux_prompt(f"fi_next{i}_", text))  # same loader/apply: the same MODEL
        if interrupted(entry) and bool((again == fresh).all()) and again.shape == fresh.shape:
            t.recovered += 1
        else:
            t.lost += 1
            t.notes.append(f"#{i} {where}: next run differs from a fresh run")
    if not client.get("/system_stats").ok:
        t.notes.append("server stopped answering")
    return t


def _wait_pending(client: ComfyClient, prompt_id: str) -> bool:
    pending = client.queue_state().get("queue_pending", [])
    return any(item[1] == prompt_id for item in pending)


def queued_preset_changes(client: ComfyClient, srv: ComfyServer) -> Tally:
    t = Tally("user preset replaced or deleted while a run using it is queued")
    folder = presets_dir(srv)
    fresh_other = run_latent(client, flux_prompt("fq_ref_other", spell(OTHER, 0)))
    fresh = run_latent(client, flux_prompt("fq_ref", spell(ACTIONS, 0)))
    blocker = flux_prompt("fq_block", steps=12, procache=False)  # keeps the queue busy for a moment
    for k, how in enumerate(("overwrite through the UI", "rewritten in place", "deleted")):
        name = f"fault-q{k}"
        assert save_preset(client, name, ACTIONS).status_code in (200, 201)
        blocker["sampler"]["inputs"]["seed"] = 100 + k  # a new blocker run each time
        client.queue(blocker)
        pid = client.queue(flux_prompt(f"fq_run{k}_", "", preset=f"user/{name}"))
        was_pending = _wait_pending(client, pid)
        t.injected += 1
        if how == "overwrite through the UI":
            save_preset(client, name, OTHER)
        elif how == "rewritten in place":  # an editor that truncates and writes
            (folder / f"{name}.yaml").write_text(f"version: 1\nname: {name}\nactions: {OTHER}\n")
        else:
            (folder / f"{name}.yaml").unlink()
        entry = client.wait(pid, timeout=900, raise_on_error=False)
        if not was_pending:
            t.notes.append(f"{how}: the run had already started when the file changed")
        if how == "deleted":
            msg = exec_error(entry)
            ok = entry["status"]["status_str"] == "error" and msg.startswith("ProCache: 'preset'") and \
                str(srv.workdir) not in msg
            if not ok:
                t.notes.append(f"{how}: {entry['status']['status_str']} {msg[:120]}")
        else:
            got = latent_of(client, entry) if entry["status"]["status_str"] == "success" else None
            ok = got is not None and bool((got == fresh_other).all())
            if not ok:
                t.notes.append(f"{how}: the queued run did not use the new file")
        again = run_latent(client, flux_prompt(f"fq_next{k}_", spell(ACTIONS, 40 + k)))
        if ok and bool((again == fresh).all()):
            t.recovered += 1
        else:
            t.lost += 1
    if leftovers(srv):
        t.lost += 1
        t.notes.append(f"left {leftovers(srv)}")
    return t


def two_schedules(client: ComfyClient) -> Tally:
    t = Tally("two queued runs of one MODEL patched with different schedules")
    fa = run_latent(client, flux_prompt("f2_ref_a", spell(ACTIONS, 60)))
    fb = run_latent(client, flux_prompt("f2_ref_b", spell(OTHER, 60)))
    pa = client.queue(flux_prompt("f2_a", spell(ACTIONS, 61)))
    pb = client.queue(flux_prompt("f2_b", spell(OTHER, 61)))
    t.injected += 1
    a = latent_of(client, client.wait(pa, timeout=900))
    b = latent_of(client, client.wait(pb, timeout=900))
    if bool((a == fa).all()) and bool((b == fb).all()):
        t.recovered += 1
    else:
        t.lost += 1
        t.notes.append("queued back to back: a run differs from its fresh run")
    # both in one prompt: two Applies on the same loaded MODEL, two samplers
    p = flux_prompt("f2_one_a", spell(ACTIONS, 62))
    q = flux_prompt("f2_one_b", spell(OTHER, 62))
    for k in ("schedule", "selective", "apply", "sampler", "save"):
        node = json.loads(json.dumps(q[k]))
        for inp, v in node["inputs"].items():  # links to the copied nodes go to the copies
            if isinstance(v, list) and len(v) == 2 and v[0] in ("schedule", "selective", "apply", "sampler"):
                node["inputs"][inp] = [v[0] + "2", v[1]]
        p[k + "2"] = node
    t.injected += 1
    entry = client.run(p, timeout=900)
    lats = {Path(f).name.split("_0")[0]: load_latent(f) for f in client.output_files(entry, "latents")}
    la, lb = lats.get("f2_one_a"), lats.get("f2_one_b")
    if la is not None and lb is not None and bool((la == fa).all()) and bool((lb == fb).all()):
        t.recovered += 1
    else:
        t.lost += 1
        t.notes.append(f"one prompt, two Applies: outputs {sorted(lats)} differ from their fresh runs")
    return t


def no_dac_launcher() -> list[str]:
    """Root ignores file modes; run the server without the capabilities that make it do so."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        raise RuntimeError("running as root without setpriv: a read-only folder cannot be simulated")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def read_only_folder(srv: ComfyServer) -> Tally:
    t = Tally("user preset folder read-only")
    client = srv.client()
    folder = presets_dir(srv)
    assert save_preset(client, "ro-keep", ACTIONS).status_code in (200, 201)
    before = (folder / "ro-keep.yaml").read_bytes()
    fresh = run_latent(client, flux_prompt("fr_ref", spell(ACTIONS, 80)))
    os.chmod(folder, 0o555)
    t.injected += 1
    try:
        r = save_preset(client, "ro-new", ACTIONS)
        r2 = save_preset(client, "ro-keep", OTHER)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        refused = r.status_code == 403 and r2.status_code == 403 and body.get("field") == "user_presets_folder" \
            and str(srv.workdir) not in r.text
        if not refused:
            t.notes.append(f"save into the read-only folder answered {r.status_code} {r.text[:150]}")
        listed = {p["name"] for p in client.get("/procache/presets").json()["presets"]}
        ran = run_latent(client, flux_prompt("fr_run", "", preset="user/ro-keep"))
        ok = refused and "user/ro-keep" in listed and bool((ran == fresh).all())
    finally:
        os.chmod(folder, 0o755)
    r = save_preset(client, "ro-new", OTHER)
    ok = ok and r.status_code == 201 and (folder / "ro-keep.yaml").read_bytes() == before
    if ok and not leftovers(srv):
        t.recovered += 1
    else:
        t.lost += 1
        t.notes.append(f"after: save {r.status_code}, leftovers {leftovers(srv)}")
    return t


def restarts(srv: ComfyServer, n: int, seed: int = 0) -> tuple[Tally, ComfyServer]:
    """SIGKILL while the UI saves over a preset; returns the tally and the server running at the end."""
    t = Tally("server killed while saving a preset, restarted")
    rng = random.Random(seed)
    client = srv.client()
    versions = {ACTIONS: None, OTHER: None}
    for acts in versions:
        versions[acts] = run_latent(client, flux_prompt(f"fk_ref_{acts}", spell(acts, 90)))
    assert save_preset(client, "keep", ACTIONS).status_code in (200, 201)
    for i in range(n):
        stop = threading.Event()

        def hammer() -> None:
            k = 0
            while not stop.is_set():
                try:
                    save_preset(client, "keep", (ACTIONS, OTHER)[k % 2])
                except requests.RequestException:
                    return
                k += 1

        th = threading.Thread(target=hammer, daemon=True)
        th.start()
        time.sleep(rng.uniform(0.3, 1.5))
        (presets_dir(srv) / ".tmp-crash.yaml").write_text("version: 1\nname: keep\nacti")  # a save cut short
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(30)
        stop.set()
        th.join(30)
        t.injected += 1
        srv = ComfyServer(workdir=srv.workdir, launcher=srv.launcher).start()
        client = srv.client()
        got = client.get("/procache/presets/user/keep")
        acts = got.json().get("actions") if got.status_code == 200 else None
        whole = acts in versions
        if not whole:
            t.notes.append(f"#{i}: preset after restart: {got.status_code} {got.text[:120]}")
        ran = run_latent(client, flux_prompt(f"fk_run{i}_", "", preset="user/keep")) if whole else None
        if whole and bool((ran == versions[acts]).all()) and not leftovers(srv):
            t.recovered += 1
        else:
            t.lost += 1
            t.notes.append(f"#{i}: leftovers {leftovers(srv)}")
    return t, srv


# -- report -------------------------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]], info: dict[str, Any], seconds: float) -> str:
    tot = {k: sum(r[k] for r in rows) for k in ("faults_injected", "runs_recovered", "data_lost")}
    lines = ["## Faults through the real server (`make bench-faults`)", "",
             "Every recovered run was compared bitwise with a fresh run of the same prompt (tiny host Flux, "
             f"{STEPS} euler steps, schedule `{ACTIONS}` / `{OTHER}` + Selective Compute Settings). *Data lost* "
             "counts runs that differed from their fresh run, outputs written by an interrupted run, presets "
             "found half-written or lost, and temporary files left in the presets folder.", "",
             "| scenario | faults injected | runs recovered | data lost |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['faults_injected']} | {r['runs_recovered']} | {r['data_lost']} |")
    lines.append(f"| **total** | **{tot['faults_injected']}** | **{tot['runs_recovered']}** | **{tot['data_lost']}** |")
    notes = [f"{r['scenario']}: {n}" for r in rows for n in r["notes"]]
    lines += ["", f"{info['date_utc']}, commit {info['git_commit']}, {seconds:.0f} s on {info['cpu_count']} shared "
              f"CPU cores (load average {info['loadavg_1_5_15']}).", ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.load import RESULTS as _R, machine, update_readme_section  # noqa: F401

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interrupts", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="procache-faults-"))
    srv = ComfyServer(workdir=work, launcher=no_dac_launcher()).start()
    rows = []
    try:
        client = srv.client()
        for name, fn in (("interrupts", lambda: interrupts(client, args.interrupts, args.seed)),
                         ("queued", lambda: queued_preset_changes(client, srv)),
                         ("two schedules", lambda: two_schedules(client)),
                         ("read-only", lambda: read_only_folder(srv))):
            try:
                tally = fn()
            except Exception as exc:  # a scenario that breaks is reported, not hidden
                tally = Tally(name, notes=[f"scenario failed: {type(exc).__name__}: {exc}"[:300]])
            rows.append(tally.row())
            print(tally.row(), flush=True)
        try:
            tally, srv = restarts(srv, args.restarts, args.seed)
        except Exception as exc:
            tally = Tally("restart", notes=[f"scenario failed: {type(exc).__name__}: {exc}"[:300]])
        rows.append(tally.row())
        print(tally.row(), flush=True)
    finally:
        srv.stop()
    info = machine()
    text = markdown(rows, info, time.monotonic() - t0)
    (args.out / "raw").mkdir(parents=True, exist_ok=True)
    (args.out / "raw" / "faults_cpu.json").write_text(json.dumps({"rows": rows, "machine": info}, indent=1))
    (args.out / "faults_cpu.md").write_text("# ProCache fault injection (CPU)\n\n" + text)
    if args.out == RESULTS:
        update_readme_section("faults", text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
