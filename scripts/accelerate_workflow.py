#!/usr/bin/env python3
"""Insert ProCache Apply before every sampler's MODEL input of a workflow file (UI or API format).

The headless twin of the front end's "ProCache: accelerate this workflow" command: same rule
(docs/accelerate.md, procache_core/accelerate.py), subgraphs included.

    python scripts/accelerate_workflow.py in.json -o out.json            # UI-format or API-format
    python scripts/accelerate_workflow.py in.json --in-place
    python scripts/accelerate_workflow.py in.json --server http://127.0.0.1:8188   # check node types there
    python scripts/accelerate_workflow.py in.json --object-info object_info.json

Without -o / --in-place the result goes to stdout. Exit 0 on success (also when nothing needed
inserting), 1 when the input is refused (broken file, no sampler, unknown node types): the message
names the problem and no file is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from procache_core.accelerate import AccelerateError, accelerate  # noqa: E402


def load_object_info(server: str | None, path: str | None) -> dict | None:
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AccelerateError(f"--object-info {path}: cannot read it as JSON ({e})") from e
    elif server:
        import urllib.request

        url = server.rstrip("/") + "/object_info"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (a URL the user gave)
                data = json.loads(r.read().decode("utf-8"))
        except Exception as e:  # noqa: BLE001 (any network or parse failure is the same message)
            raise AccelerateError(f"--server: could not read {url} ({e})") from e
    else:
        return None
    if not isinstance(data, dict):
        raise AccelerateError("object_info is not a JSON object of node classes")
    return data


def read_workflow(path: str) -> object:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise AccelerateError(f"{path}: cannot read it ({e.strerror or e})") from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise AccelerateError(f"{path}: not valid JSON ({e}); nothing was changed") from e


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workflow", help="UI-format workflow or API-format prompt (JSON)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="where to write the result (default: stdout)")
    out.add_argument("--in-place", action="store_true", help="overwrite the input file")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--server", help="a running ComfyUI: refuse node types it does not have")
    src.add_argument("--object-info", help="a saved /object_info JSON: refuse node types it does not list")
    ap.add_argument("--quiet", action="store_true", help="no summary on stderr")
    args = ap.parse_args(argv)
    try:
        info = load_object_info(args.server, args.object_info)
        data = read_workflow(args.workflow)
        result, plan, kind = accelerate(data, object_info=info)
    except AccelerateError as e:
        print(f"accelerate_workflow: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2 if kind == "ui" else None, ensure_ascii=False) + "\n"
    if args.in_place or args.output:
        write_atomic(Path(args.workflow if args.in_place else args.output), text)
    else:
        sys.stdout.write(text)
    if not args.quiet:
        where = {}
        for ins in plan.insert:
            where.setdefault(ins.graph, []).append(str(ins.node))
        done = "; ".join(f"{'root graph' if g == 'root' else 'subgraph ' + g}: before node(s) {', '.join(ns)}"
                         for g, ns in where.items())
        print(f"accelerate_workflow: {kind} format, {plan.samplers} sampler(s), inserted {len(plan.insert)} "
              f"ProCache Apply{(' (' + done + ')') if done else ''}"
              + "".join(f"\n  left alone: node {n} input {s} ({r})" for _g, n, s, r in plan.skipped),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
