"""Imports the host's `comfy` package inside this process, forced onto the CPU.

Model makers and in-process tests need the host's own classes (to get its key layouts exactly) on a
machine without a GPU; ComfyUI decides its device when `comfy.model_management` is first imported,
from its command-line arguments, so those are set before that import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# PROCACHE_HOST: another ComfyUI tree of the host matrix (scripts/setup_hosts.sh); default 0.3.75
DEFAULT_COMFY = Path(os.environ.get("PROCACHE_HOST") or ROOT / ".host" / "ComfyUI")


def use_host(comfy_dir: Path = DEFAULT_COMFY, cpu: bool = True) -> Path:
    comfy_dir = Path(comfy_dir).resolve()
    if not (comfy_dir / "comfy").is_dir():
        raise SystemExit(f"ComfyUI not found at {comfy_dir}: run scripts/setup_host.sh first")
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    if "comfy.model_management" not in sys.modules:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        args.cpu = cpu
    return comfy_dir
