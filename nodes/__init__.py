"""ComfyUI side of ProCache: the nodes, the sampling bridge and one adapter per model family.

Everything here may import ComfyUI; `procache_core` never does. Imports inside the pack are relative
because the host imports it under a mangled module name (and has its own top-level `nodes`).
"""
