"""Writes ProCache Apply's Chinese description into locales/zh/nodeDefs.json from the family registry.

The host serves the locale file as is, so the family list in it is generated (nodes/family_text.py), not
written by hand: run this after adding a family. It loads the pack in process on the default host
(.host/ComfyUI; PROCACHE_HOST picks another), CPU only.

Usage: python scripts/make_locales.py [--check]   (--check: exit 1 when the file is stale)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZH = ROOT / "locales" / "zh" / "nodeDefs.json"


def render(text: str, description: str) -> str:
    """``text`` (the zh nodeDefs.json) with ProCache Apply's description replaced, same layout."""
    defs = json.loads(text)
    defs["ProCacheApply"]["description"] = description
    return json.dumps(defs, ensure_ascii=False, indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file differs from what would be written")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from _inprocess import load_pack  # the pack as the in-process tests load it, on the host's CPU

    load_pack()
    from procache_pack.nodes.family_text import apply_description_zh

    old = ZH.read_text(encoding="utf-8")
    new = render(old, apply_description_zh())
    if new == old:
        print(f"{ZH.relative_to(ROOT)} is current")
        return 0
    if args.check:
        print(f"{ZH.relative_to(ROOT)} is stale: run python scripts/make_locales.py", file=sys.stderr)
        return 1
    ZH.write_text(new, encoding="utf-8")
    print(f"wrote {ZH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
