"""Shared helpers: machine info, timing (interleaved repeats, median), markdown tables and number cells,
JSON output, the results README's marked blocks, the digits demo module."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    for mod in ("numpy", "sklearn", "matplotlib", "safetensors"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - version is informational
            pass
    commit = code_commit(7)
    if commit:
        info["git_commit"] = commit
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result)."""
    sync(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def interleaved(methods: Sequence[str], run: Callable[[str], Any], repeats: int, device: str,
                log=print) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times every method `repeats` times, round-robin (method order rotated each round) so that
    load from other processes on a shared machine hits all methods alike.

    Returns (wall seconds, process CPU seconds) per run. On a CPU the process CPU time is much less
    sensitive to other processes than the wall clock (with one torch thread it equals the wall time
    of an idle machine); on a GPU only the wall clock is meaningful."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    order = list(methods)
    for r in range(repeats):
        for m in order:
            dt, dc, _ = timed(lambda: run(m), device)
            times[m].append(dt)
            cpu[m].append(dc)
            log(f"    [{r + 1}/{repeats}] {m:<22s} {dt:7.2f} s wall  {dc:7.2f} s cpu")
        order = order[1:] + order[:1]
    return times, cpu


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def fmt_num(x: float | None, nd: int = 2) -> str:
    """A table cell: ``x`` to ``nd`` decimals, "n/a" where the bench could not measure it (None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def block_marks(name: str) -> tuple[str, str]:
    """The start and end markers of the results README's block ``name`` (HTML comments, invisible)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def block_in(text: str, start: str, end: str) -> str | None:
    """The block between ``start`` and ``end`` in ``text``, markers included (None where it has none)."""
    if start in text and end in text:
        return start + text.split(start, 1)[1].split(end, 1)[0] + end
    return None


def put_block(text: str, start: str, end: str, block: str, at_end: bool = False) -> str:
    """``text`` with its block between ``start`` and ``end`` (markers included) replaced by ``block`` (which
    carries the markers): in place, or moved to the end with ``at_end``; appended where ``text`` has none.
    Each bench owns one block, so rerunning one bench leaves the others' numbers as they are."""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        if not at_end:
            return head + block + tail
        text = head.rstrip("\n") + "\n" + tail.lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_readme_block(readme: Path, start: str, end: str, block: str, at_end: bool = False) -> None:
    """:func:`put_block` on the README file (a missing one starts as the results README's title)."""
    old = readme.read_text() if readme.exists() else "# ProCache benchmark results\n"
    readme.write_text(put_block(old, start, end, block, at_end))


def digits_module() -> ModuleType:
    """nodes/demo/digits.py, imported by path once (it has no relative imports; the host's comfy is imported
    lazily), so the benches and trainers use the demo's own models without loading the pack."""
    name = "procache_demo_digits"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RESULTS.parents[1] / "nodes" / "demo" / "digits.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, rate: float) -> None:
    """One EMA step of the training scripts' weights (decay warms up as (1 + step) / (10 + step))."""
    decay = min(rate, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


class LossLog:
    """The training scripts' loss record: every loss, and the mean of each 100 steps, logged and kept as
    the curve saved in the weights' metadata."""

    def __init__(self, log: Callable[[str], Any], prefix: str) -> None:
        self.log, self.prefix = log, prefix
        self.losses: list[float] = []
        self.curve: list[tuple[int, float]] = []
        self.t0 = time.time()

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        done = len(self.losses)
        if done % 100 == 0:
            m = sum(self.losses[-100:]) / 100
            self.curve.append((done, round(m, 5)))
            self.log(f"{self.prefix} step {done:5d}  loss(avg100) {m:.4f}  {time.time() - self.t0:6.1f} s")

    def final_avg100(self) -> float:
        tail = self.losses[-100:]
        return round(sum(tail) / max(1, len(tail)), 5)


def train_steps(net: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                batch_loss: Callable[[], torch.Tensor], *, steps: int, lr: float, warmup: int, ema_rate: float,
                time_budget: float | None, rec: LossLog) -> int:
    """The training scripts' loop: linear warm-up of the learning rate, one `batch_loss()` per step (it
    draws its own batch), gradient clipping at 1, the EMA update; stops early past `time_budget`
    seconds since `rec` started. Returns the steps run."""
    done = 0
    for step in range(steps):
        if time_budget is not None and time.time() - rec.t0 > time_budget:
            rec.log(f"{rec.prefix} time budget {time_budget:.0f} s reached after {step} steps")
            break
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup)
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, step, ema_rate)
        rec.add(loss.item())
        done = step + 1
    return done


def head_commit() -> str:
    """The commit stamp of the code a bench measures (:func:`code_commit`: the short commit, ``+dirty`` when
    code differs from it); "unknown" outside git. Every stamp the benches write comes from this one rule."""
    return code_commit(7) or "unknown"


READING = "**Reading.**"


def keep_reading(new_text: str, path: Path) -> str:
    """``new_text`` with the hand-written ``**Reading.**`` paragraph of the file it replaces kept at its end:
    a generator rewrites its tables, not the reading someone wrote of them (which must then be checked against
    the new numbers: it names the numbers it quotes)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if READING not in old or READING in new_text:
        return new_text
    return new_text.rstrip("\n") + "\n\n" + old[old.index(READING):].rstrip("\n") + "\n"


def code_commit(length: int = 12) -> str | None:
    """The commit a bench measures, with ``+dirty`` when tracked files other than the results differ from it
    (what benches write into benchmarks/results/ while they run does not change the code measured); None
    outside git. Read it before the run starts, so a commit made meanwhile is not named.

    A copy of the tree outside git (a GPU machine the working tree is sent to) names its commit in
    PROCACHE_BENCH_COMMIT; whoever sends it vouches that the copy is that commit, clean."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", f"--short={length}", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        sent = os.environ.get("PROCACHE_BENCH_COMMIT", "").strip()
        return sent[:length] if re.fullmatch(r"[0-9a-f]{7,40}", sent) else None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!benchmarks/results"], cwd=root, capture_output=True, text=True).stdout.strip()
    return sha + ("+dirty" if dirty else "")


def both_metrics_verdict(a: dict, b: dict) -> int:
    """Two evaluated schedules on PSNR and FD-full together: 0 when ``a`` is at least as good on both, 1 when
    ``b`` is, 2 when the metrics disagree or the schedules are the same."""
    if a["schedule"] == b["schedule"]:
        return 2
    if a["psnr"] >= b["psnr"] and a["fd_full"] <= b["fd_full"]:
        return 0
    if b["psnr"] >= a["psnr"] and b["fd_full"] <= a["fd_full"]:
        return 1
    return 2


def run_commit_and_date(res: dict | None) -> tuple[str | None, str | None]:
    """The commit and date a raw result says it was made at, wherever the bench put them (``commit``/``date``,
    ``git_commit``/``date_utc``, or inside its ``info`` / ``machine`` record); None for what it does not say."""
    if not isinstance(res, dict):
        return None, None
    places = [res] + [res[k] for k in ("info", "machine") if isinstance(res.get(k), dict)]
    commit = next((str(d[k]) for d in places for k in ("commit", "git_commit") if d.get(k)), None)
    date = next((str(d[k]) for d in places for k in ("date", "date_utc") if d.get(k)), None)
    return commit, date


def raw_stamp(res: dict | None, command: str) -> str:
    """The stamp a results section opens with, from its raw result: "Made at commit `X` on DATE by `command`.",
    or, for a raw file written before benches recorded their commit, a line that says so (``make results-age``
    lists such a section as naming no commit)."""
    commit, date = run_commit_and_date(res)
    if commit is None:
        return (f"Made by `{command}`; the raw file predates commit stamps, so the commit it was made at is not "
                "known: rerun it (`make bench-quick`).")
    return f"Made at commit `{commit}` on {date or '?'} by `{command}`."


def run_stamp() -> dict:
    """The commit and date (UTC) a bench starts at. Take it before the run, so that a commit made while the
    bench runs is not named for numbers measured on the code before it."""
    return {"commit": head_commit(), "date": time.strftime("%Y-%m-%d", time.gmtime())}


def stamp_raw(res: dict, stamp: dict | None = None) -> dict:
    """``res`` with the commit and date of ``stamp`` (from :func:`run_stamp` at the start; now when None)."""
    res.update(stamp or run_stamp())
    return res


def made_stamp(res: dict, module: str) -> str:
    """The first words of a bench table: the commit and date it ran at, the command, its seconds (CPU)."""
    return (f"Made at commit `{res.get('commit', '?')}` on {res.get('date', '?')} by `python -m {module}` "
            f"({res['seconds']:.0f} s, CPU).")


def write_results(stem: str, run: Callable[[], dict], report: Callable[[dict], str], report_only: bool) -> None:
    """Run a bench (or, with ``report_only``, read its raw/<stem>.json again), stamp the commit and date it ran
    at, and write results/<stem>.md from it."""
    raw = RESULTS / "raw" / f"{stem}.json"
    if report_only:
        res = json.loads(raw.read_text())
    else:
        stamp = run_stamp()  # the code the run starts with
        res = stamp_raw(run(), stamp)
        write_json(raw, res)
    out = RESULTS / f"{stem}.md"
    out.write_text(keep_reading(report(res), out))
    print(f"wrote {RESULTS / (stem + '.md')}")
