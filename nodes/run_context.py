"""The ground floor of a ProCache run inside ComfyUI: option keys, what Apply decided, what its runs
did, and which run a patched block belongs to.

* :class:`ProCacheConfig` is what ProCache Apply decided (schedule, selective settings, range, adapter,
  memory request). It is immutable, so every clone of the patched MODEL may hold the same object
  (``ModelPatcher.clone`` deep-copies model options; the config returns itself from ``__deepcopy__``:
  its adapter holds the network, which must not be copied, and patches know their run by its identity).
* :class:`RunLog` is what the runs of one Apply did (runs, last stats, recent outputs for ProCache
  Stats, one-time log lines, the model-level fallback after a failed verification). It is the one
  mutable part and is shared by every clone through the config, so ProCache Stats on any clone of the
  Apply output sees the latest run.
* :func:`active_state` / :func:`active_run`: the run state of the model evaluation in progress, per
  thread (the host's multi-GPU CFG split evaluates cond and uncond in worker threads), given to a
  patch only when it belongs to that run (:func:`owns`).

Nothing here imports the bridges or the adapters: they all import this module.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from ..procache_core.plan import SHORT_RUN_FLOOR
from ..procache_core.schedule import Schedule
from ..procache_core.settings import SelectiveSettings

CONFIG_KEY = "procache"          # transformer_options key of the ProCacheConfig
RUN_KEY = "procache_run"         # transformer_options key of the current RunState (sampling only)
WRAPPER_KEY = "procache"         # key of every wrapper we add

HISTORY = 16                     # recent runs kept for ProCache Stats to match its LATENT to


class RunLog:
    """What the runs of one Apply did; the only mutable part of a config (shared by every clone)."""

    def __init__(self) -> None:
        self.noted: set[str] = set()        # one-time log lines already written (e.g. "no noise record")
        self.runs = 0                       # finished (or interrupted) runs
        self.last_stats: dict | None = None
        self.last_line: str | None = None
        self.history: list[dict] = []       # recent runs: output fingerprint + stats (ProCache Stats)
        # the config runs use once the block adapter failed verification (model-level fallback); made
        # once, so every later run of this Apply takes it and its log line is written once
        self.fallback: ProCacheConfig | None = None
        self.lock = threading.Lock()

    def note_once(self, key: str) -> bool:
        """True the first time ``key`` is noted (the caller then writes its one-time log line)."""
        with self.lock:
            if key in self.noted:
                return False
            self.noted.add(key)
            return True

    def record(self, summary: dict, output_key: tuple | None) -> None:
        """Store a finished run's summary (``summary["run_index"]`` is set here)."""
        with self.lock:
            self.runs += 1
            summary["run_index"] = self.runs
            self.last_stats = summary
            self.last_line = summary.get("line")
            if output_key is not None:
                self.history.append({"shape": output_key[0], "head": output_key[1], "stats": summary})
                del self.history[:-HISTORY]

    def __deepcopy__(self, memo):  # shared by every clone, like the config that holds it
        return self

    def __copy__(self):
        return self


@dataclass(frozen=True, eq=False)
class ProCacheConfig:
    """What ProCache Apply decided; never changed by a run (what runs did goes to ``log``)."""

    preset: Any
    schedule: Schedule
    selective: SelectiveSettings
    inject_selective: bool
    start_percent: float
    end_percent: float
    adapter: Any                        # nodes.adapters.FamilyAdapter
    short_run_floor: int = SHORT_RUN_FLOOR
    memory_request: Any = None          # memory_bridge.MemoryRequest (None: the defaults)
    log: RunLog = field(default_factory=RunLog)
    # the config Apply made, when this one is its model-level fallback (RunLog.fallback); None otherwise
    base: "ProCacheConfig | None" = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_percent", float(self.start_percent))
        object.__setattr__(self, "end_percent", float(self.end_percent))
        object.__setattr__(self, "short_run_floor", int(self.short_run_floor))

    @property
    def name(self) -> str:
        return getattr(self.preset, "name", "custom")

    @property
    def owner(self) -> "ProCacheConfig":
        """The config the patches were installed with (Apply's, also for its fallback)."""
        return self.base or self

    @property
    def block_adapter(self) -> Any:
        """The block adapter this config stands in for as the model-level fallback; None while
        ``adapter`` is what Apply chose."""
        return None if self.base is None else self.base.adapter

    def as_fallback(self, adapter: Any) -> "ProCacheConfig":
        """This config with the model-level fallback ``adapter`` and no selective compute."""
        return dataclasses.replace(self, adapter=adapter, base=self.owner, inject_selective=False,
                                   selective=dataclasses.replace(self.selective, enabled=False, start_block=None))

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: share, never copy
        return self

    def __copy__(self):
        return self


# -- the run of the model evaluation in progress ---------------------------------------------------

class CloneOwner:
    """Owner of a patch rebound to a deep clone (multi-GPU CFG split): the config and the clone's network."""

    __slots__ = ("config", "dm")

    def __init__(self, config: Any, dm: Any) -> None:
        self.config, self.dm = config, dm


def _owner_of(config: Any) -> Any:
    return config.owner if isinstance(config, ProCacheConfig) else config


def adapter_dm(config: Any) -> Any:
    """The network ProCache's block patches of ``config`` were built on."""
    adapter = config.block_adapter or config.adapter
    return adapter.dm


def owns(state: Any, owner: Any) -> bool:
    """Whether a patch of ``owner`` may use run state ``state``: a patch of the run's config on the
    network its blocks run on (a rebound patch on a multi-GPU clone carries a :class:`CloneOwner`)."""
    cfg = state.config
    own = _owner_of(cfg)
    dm = getattr(state, "dm", None)          # bare run states of in-process tests have none
    if isinstance(owner, CloneOwner):
        return owner.config is own and dm is not None and owner.dm is dm
    if owner is not own:
        return False
    return dm is None or dm is adapter_dm(cfg)


_ACTIVE = threading.local()


def push_active(state: Any) -> None:
    """Make ``state`` the run of this thread's model evaluation (until :func:`pop_active`)."""
    stack = getattr(_ACTIVE, "stack", None)
    if stack is None:
        stack = _ACTIVE.stack = []
    stack.append(state)


def pop_active() -> None:
    _ACTIVE.stack.pop()


def active_state(owner: Any) -> Any:
    """The run state of the model evaluation in progress when it belongs to ``owner`` and its patched
    blocks are ProCache's (not switched to the host's forward after a failed self-check)."""
    stack = getattr(_ACTIVE, "stack", None)
    if not stack:
        return None
    state = stack[-1]
    if state.closed or getattr(state, "blocks_off", False) or not owns(state, owner):
        return None
    return state


def active_run(owner: Any) -> Any:
    """The CacheRun of the model evaluation in progress when it belongs to ``owner``."""
    state = active_state(owner)
    return None if state is None else state.run


def block_compile(owner: Any) -> dict | None:
    """The host's compile settings for ``owner``'s patched block maths in the run in progress
    (``RunState.block_compile``); None when the model is not compiled or the adapter keeps them eager."""
    state = active_state(owner)
    return None if state is None else getattr(state, "block_compile", None)
