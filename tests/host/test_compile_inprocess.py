"""Flux branch maths compiled with the host's torch.compile settings (nodes/adapters/compiled.py).

In process: the host's tiny Flux compiled the way TorchCompileModel compiles it (``torch.compile`` of the
diffusion model, CPU inductor) and ProCache's Flux adapter with ``block_compile`` set to the host's
compile kwargs, as the runtime bridge sets it. Checks that each branch function (joint attention, stream
MLP, single-block fused branch) has compiled code, that the output matches the eager ProCache run, and
that twice the steps compile nothing new (no per-step or per-block guards). ~40 s on 2 cores (inductor).
"""
from __future__ import annotations

import torch

from _families import patched_run
from test_adapters_pixart_flux_sd3_wan import call, tiny_flux

from procache_pack.nodes.adapters import compiled as C  # noqa: E402
from procache_pack.nodes.adapters import flux as F  # noqa: E402

KW = {"backend": "inductor", "options": None, "mode": None, "fullgraph": False, "dynamic": None}
BRANCHES = (F.double_qkv, F.stream_mlp, F.single_pre, F.single_post)


def _run(dm, model, schedule: str, kw):
    outs, run = patched_run("flux", dm, schedule, lambda fam, _dm, to: call(fam, model, to), ratio=0.5,
                            block_compile=kw)
    return outs, run.stats


def _entries(fn) -> int:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(fn.__code__))


def test_flux_branch_maths_compile_once_and_match_eager():
    from torch._dynamo.utils import counters

    dm = tiny_flux()
    eager, _ = _run(dm, dm, "FCSFCS", None)
    torch._dynamo.reset()
    counters.clear()
    compiled_dm = torch.compile(dm, backend="inductor")
    outs, stats = _run(dm, compiled_dm, "FCSFCS", KW)
    assert stats.steps_cached > 0 and stats.steps_selective > 0  # the schedule reused features
    for a, b in zip(eager, outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    per_fn = {fn.__name__: _entries(fn) for fn in BRANCHES}
    assert all(n >= 1 for n in per_fn.values()), per_fn  # the branch maths ran compiled
    # one graph serves every block of a kind: far fewer entries than block calls (2 double + 2 single
    # blocks, 6 steps, 2 streams), whatever the step count
    assert sum(per_fn.values()) <= 12, per_fn
    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 24, dict(counters["stats"])  # measured 14 (9 with the blocks eager)
    again, _ = _run(dm, compiled_dm, "FCSFCS" * 2, KW)
    assert counters["stats"]["unique_graphs"] == graphs, (graphs, dict(counters["stats"]))
    assert {fn.__name__: _entries(fn) for fn in BRANCHES} == per_fn
    assert all(torch.isfinite(o).all() for o in again)


def test_not_compiled_without_the_hosts_compile():
    assert C.compiled(F.stream_mlp, None) is F.stream_mlp
    assert C.compiled(F.stream_mlp, KW) is C.compiled(F.stream_mlp, dict(KW))  # one compiled function per settings
