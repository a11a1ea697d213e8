"""Drive a family adapter in process the way the runtime bridge does (shared by the adapter tests).

``patched_run`` installs the adapter's patches on a :class:`FakePatcher` of a tiny host network, then
for every step of a schedule: ``CacheRun.begin_step`` + ``set_stream``, the run state pushed on the
active stack, and one forward call of the network through ``call(family, dm, transformer_options)``.
"""
from __future__ import annotations

import types
from typing import Any, Callable

from _inprocess import FakePatcher, load_pack

load_pack()
from procache_pack.nodes import adapters as A  # noqa: E402
from procache_pack.nodes import run_context as RC  # noqa: E402
from procache_pack.procache_core.engine import CacheRun  # noqa: E402
from procache_pack.procache_core.schedule import Schedule  # noqa: E402
from procache_pack.procache_core.settings import SelectiveSettings  # noqa: E402


def patched_run(family: str, dm: Any, schedule: str, call: Callable[[str, Any, dict], Any], ratio: float = 0.5,
                depth_fraction: float = 1.0, memory: Any = None, expect: str | None = None,
                block_compile: dict | None = None,
                install: Callable[[FakePatcher, Callable[[], None]], None] | None = None):
    """Outputs of every step of ``schedule`` on the same inputs through the adapter, and the closed
    ``CacheRun`` (``run.stats``, ``run.adapter``). ``expect``: the detected family when it is not
    ``family`` (the name ``call`` knows the inputs by). ``block_compile``: the host's compile kwargs, as the
    runtime bridge sets them on the run state under TorchCompileModel. ``install(fp, do_install)``: called instead of the
    adapter's install, which it runs by calling ``do_install()`` where it wants it among its own patches."""
    fp = FakePatcher(dm)
    adapter = A.adapter_for(fp)
    assert adapter.family == (expect or family)
    owner = types.SimpleNamespace()
    if install is None:
        adapter.install(fp, owner)
    else:  # the caller places the adapter's install among its own patches (other packs' nodes)
        install(fp, lambda: adapter.install(fp, owner))
    run = CacheRun(Schedule.from_string(schedule), SelectiveSettings(ratio=ratio, depth_fraction=depth_fraction),
                   num_blocks=adapter.num_blocks, memory=memory, lanes=adapter.lanes())
    run.adapter = adapter
    # block_compile: what the runtime bridge sets on the run state under TorchCompileModel
    state = types.SimpleNamespace(config=owner, run=run, closed=False, block_compile=block_compile)
    outs = []
    with fp.patched():
        for step in range(len(schedule)):
            run.begin_step(step)
            run.set_stream((0, 1), chunks=2)
            RC.push_active(state)
            try:
                outs.append(call(family, dm, dict(fp.model_options["transformer_options"])))
            finally:
                RC.pop_active()
    run.close()
    return outs, run
