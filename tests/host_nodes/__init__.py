"""Test-only ComfyUI nodes, linked into the host's custom_nodes by the harness for tests and the demo.

They stand in for what cannot exist on a machine without downloaded weights: a text encoder.
Never shipped to users as part of the pack.
"""

WEB_DIRECTORY = None


async def comfy_entrypoint():
    from .test_nodes import ProCacheTestExtension

    return ProCacheTestExtension()
