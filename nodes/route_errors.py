"""How a /procache/ route refuses: an HTTP status with JSON ``{"error", "field", "fix"}``, never the
server's folders (a refusal tells the user what is wrong, not where the server keeps its files)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..procache_core.errors import ProCacheError


class RouteError(Exception):
    """A refusal: HTTP ``status`` with a JSON body."""

    def __init__(self, status: int, message: str, field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": scrub_paths(message)}
        if field:
            self.body["field"] = scrub_paths(str(field))
        if fix:
            self.body["fix"] = scrub_paths(fix)

    @classmethod
    def from_procache(cls, exc: ProCacheError, status: int = 400) -> "RouteError":
        return cls(status, str(exc), getattr(exc, "field", None), getattr(exc, "fix", None))


def _server_roots() -> list[tuple[str, str]]:
    """(absolute folder, what a client is shown instead), most specific first."""
    roots: list[tuple[str, str]] = []
    try:
        from .preset_files import user_presets_dir

        udir = user_presets_dir(create=False)
        roots += [(str(udir.resolve()), "<user dir>/procache_presets"), (str(udir), "<user dir>/procache_presets"),
                  (str(udir.parent.resolve()), "<user dir>"), (str(udir.parent), "<user dir>")]
    except Exception:  # no host (plain tests): nothing to hide but the pack itself
        pass
    pack = Path(__file__).resolve().parent.parent
    roots += [(str(pack / "schedules"), "<ProCache>/schedules"), (str(pack), "<ProCache>")]
    try:
        import folder_paths

        roots.append((str(Path(folder_paths.base_path).resolve()), "<ComfyUI>"))
        roots.append((str(folder_paths.base_path), "<ComfyUI>"))
    except Exception:
        pass
    return sorted({r for r in roots if len(r[0]) > 1}, key=lambda r: -len(r[0]))


_ABS_PATH_RE = re.compile(r"(?<![\w.<>])/(?:[^\s/'\"(),:]+/)+([^\s/'\"(),:]*)")


def scrub_paths(text: str, any_path: bool = False) -> str:
    """``text`` without the server's folders (shown as placeholders such as ``<user dir>``); with
    ``any_path`` (text of an unexpected exception) every other absolute path is cut to its last part."""
    for root, shown in _server_roots():
        text = text.replace(root, shown)
    return _ABS_PATH_RE.sub(lambda m: ".../" + m.group(1), text) if any_path else text
