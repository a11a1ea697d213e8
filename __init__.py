"""ProCache for ComfyUI: constraint-aware feature caching with selective token recompute for DiTs.

ComfyUI loads this file as the pack's entry point. Nothing here imports ComfyUI at import time, so
the package (and `procache_core`) can be imported and tested without a host.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 entry point: the host awaits this and registers the nodes of the returned extension."""
    from .nodes.extension import ProCacheExtension

    return ProCacheExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
