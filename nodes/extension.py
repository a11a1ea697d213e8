"""The pack's V3 extension: the list of nodes ComfyUI registers."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

try:  # the /procache/ HTTP routes used by the web UI (web/js/procache.js), registered as the pack starts
    from . import routes as _routes

    _routes.register_on_host()
except Exception:  # the nodes must load even if the UI routes cannot
    import logging

    logging.getLogger("ProCache").exception("ProCache: web UI routes not registered")


class ProCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .apply import ProCacheApply, ProCacheStats
        from .calibrate import ProCacheScheduleSearch
        from .demo.nodes import NODES as DEMO_NODES
        from .schedule_loader import ProCacheScheduleLoader
        from .selective_settings import ProCacheSelectiveSettings

        return [ProCacheScheduleLoader, ProCacheSelectiveSettings, ProCacheApply, ProCacheStats,
                ProCacheScheduleSearch, *DEMO_NODES]
