"""ProCache Apply's description, English and Chinese, derived from the registered families.

The family list is never written by hand: each family's ``label`` and ``selective`` note come from its
``register(...)`` row (``adapters/registry.py``), in detection order, families with the same note grouped.
The English text is the node's description (the families this host can load); the Chinese one is what
``locales/zh/nodeDefs.json`` holds (the host serves that file as is, on every host: it lists every shipped
family), written by ``scripts/make_locales.py`` and checked against this module by
``tests/host/test_adapter_registry.py``.
"""
from __future__ import annotations

_EN_HEAD = ("Returns a copy of the MODEL that caches transformer block outputs across denoising steps according to "
            "the schedule. Block adapters (schedule + selective compute of token-local branches on selective steps; "
            "after each family, what selective steps recompute): ")
_EN_TAIL = (". Any other model the host samples (SD1.x/SDXL UNets, Cosmos 1.0, HunyuanDiT, ...) gets schedule-only "
            "caching of the whole model call: a reused step returns the last computed clean-sample estimate, which "
            "the sampler turns into a step from the current input and noise level; no selective compute (selective "
            "steps act as cached). The stats line names the family used. The cache_* inputs choose where the cache "
            "lives (device / CPU memory), its dtype and the memory-light mode; the log gives the estimated size "
            "before the first step.")
_ZH_HEAD = ("返回一个 MODEL 副本，按调度在去噪步骤之间缓存 Transformer 模块输出。"
            "带模块适配器的系列（调度 + 选择性计算）：")
_ZH_TAIL = ("；其他模型（SD1.x/SDXL UNet、Cosmos 1.0、HunyuanDiT 等）对整个模型调用做仅调度缓存，"
            "无选择性计算。cache_* 输入决定缓存放在哪里（设备或 CPU 内存）、其数据类型及省内存模式；"
            "日志会在第一步前给出估计大小。")


def _groups() -> list[tuple[list[str], str]]:
    """(labels, note) per distinct ``selective`` note, in the detection order of its first family."""
    from .adapters import registry

    groups: dict[str, list[str]] = {}
    for fam in registry.families().values():
        groups.setdefault(fam.selective, []).append(fam.label)
    return [(labels, note) for note, labels in groups.items()]


def apply_description() -> str:
    """ProCache Apply's description (English)."""
    parts = [", ".join(labels) + (f": {note}" if note else "") for labels, note in _groups()]
    return _EN_HEAD + "; ".join(parts) + _EN_TAIL


def apply_description_zh() -> str:
    """ProCache Apply's description in Chinese (the family labels are names: the same in both). One file
    serves every host, so it lists every family the pack ships, those this host cannot load included."""
    from .adapters import registry

    rows = [(f.priority, f.name, f.label) for f in registry.families().values()] + registry.unloaded()
    return _ZH_HEAD + "、".join(label for _, _, label in sorted(rows)) + _ZH_TAIL
