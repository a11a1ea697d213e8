"""Test- and bench-only ComfyUI nodes: the one folder for nodes that are never shipped with the pack.

* ``nodes_<what>.py``: test nodes, each module exporting ``NODES``. The harness links this folder into the
  host's custom_nodes as ``ProCacheTestNodes`` (scripts/setup_host.sh, scripts/setup_hosts.sh) for the tests
  and the demo; the extension below serves every ``NODES`` of them. They stand in for what cannot exist on
  a machine without downloaded weights (a text encoder, tiny models of the host's classes) and probe runs.
* ``tiny_*.py``: builders of tiny host-class networks, loaded by the test nodes and by the in-process tests.
* ``bench_*.py``: a bench server's own custom-node file, linked by that bench alone (never by the harness):
  ``bench_block_counts.py`` for ``make bench-peers`` (benchmarks/peers.py).
"""
from __future__ import annotations

WEB_DIRECTORY = None


def _topic_nodes() -> list:
    """Nodes of the topic modules of this folder (``nodes_<what>.py``, each exporting ``NODES``), by name."""
    import importlib
    import pkgutil
    from pathlib import Path

    found: list = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("nodes_"):
            mod = importlib.import_module(f"{__package__}.{info.name}")
            found.extend(getattr(mod, "NODES", []))
    return found


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension, io

    class ProCacheTestExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return _topic_nodes()

    return ProCacheTestExtension()
