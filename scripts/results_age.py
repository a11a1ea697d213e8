"""How old each committed benchmark result is against the code it describes.

    python scripts/results_age.py [--paths procache_core nodes] [FILE ...]

For every ``## `` section of the results files (default: ``benchmarks/results/*.md`` and
``benchmarks/results/sections/*.md``) it finds the commits the section names ("commit `abc1234`",
"git_commit | abc1234", "commit abc1234+dirty"), takes the newest of them and counts the commits since
then that touched the code (``--paths``, default the engine and the nodes). A section naming no commit, or
one git does not know, is listed as such. The table goes to stdout; nothing is written, so the answer
is always about the checkout it runs in (issue #28: no number older than the code it describes).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMIT_RE = re.compile(r"(?:git_commit \| |commits? `?)([0-9a-f]{7,40})(?:\+dirty)?`?"
                       r"(?: \+ `?([0-9a-f]{7,40})`?)?")


@dataclass
class Section:
    file: str
    title: str
    commits: list[str]
    inherited: bool = False   # names no commit itself: the file's stamp (its ``#`` title) holds
    level: int = 0            # 1 for a ``#`` title, 2 for a ``##`` section
    has_table: bool = False   # holds table rows of its own (a title over ``##`` sections often holds none)


def sections(path: Path, root: Path = ROOT) -> list[Section]:
    """The file's ``#``/``##`` sections (a ``###`` stays inside its ``##``) with the commits each names; a
    ``##`` section naming none takes its ``#`` title's stamp (the commits named under that title). A
    ``## Machine`` table is not taken as a stamp: a README that several runs fill names several commits."""
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    out: list[Section] = []
    current = Section(rel, "(top)", [])
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"#{1,2} ", line):
            out.append(current)
            current = Section(rel, line.lstrip("# ").strip(), [])
            current.level = 1 if line.startswith("# ") else 2
        for m in COMMIT_RE.finditer(line):
            current.commits.extend(c for c in m.groups() if c)
        current.has_table = current.has_table or line.lstrip().startswith("|")
    out.append(current)
    out = [s for s in out if s.title != "(top)" or s.commits]
    parent: Section | None = None
    for s in out:
        if s.level == 1:
            parent = s
        elif s.level == 2 and not s.commits and parent is not None and parent.commits:
            s.commits, s.inherited = list(parent.commits), True
    # a ``#`` title with neither a stamp nor a table of its own, over ``##`` sections, holds no numbers
    out = [s for i, s in enumerate(out) if not (s.level == 1 and not s.commits and not s.has_table
                                                and i + 1 < len(out) and out[i + 1].level == 2)]
    return out


def _git(*args: str) -> str | None:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def newest(commits: list[str]) -> str | None:
    """The newest of ``commits`` that git knows (the section's numbers are at least that old)."""
    known = [c for c in dict.fromkeys(commits) if _git("cat-file", "-e", f"{c}^{{commit}}") is not None]
    if not known:
        return None
    # by history, not by clock: commits replayed or rebased together share one commit time
    depth = {c: int(_git("rev-list", "--count", c) or 0) for c in known}
    stamp = {c: int(_git("log", "-1", "--format=%ct", c) or 0) for c in known}
    return max(known, key=lambda c: (depth[c], stamp[c]))


def code_commits_since(commit: str, paths: list[str]) -> int:
    out = _git("rev-list", "--count", f"{commit}..HEAD", "--", *paths)
    return int(out) if out else -1


def table(files: list[Path], paths: list[str]) -> str:
    rows = ["| file | section | newest commit named | code commits since |", "|---|---|---|---|"]
    for f in files:
        for s in sections(f):
            c = newest(s.commits)
            since = "no commit named" if not s.commits else ("unknown commit" if c is None
                                                            else str(code_commits_since(c, paths)))
            named = (c or ", ".join(s.commits) or "-") + (" (file stamp)" if s.inherited else "")
            rows.append(f"| {s.file} | {s.title[:70]} | {named} | {since} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--paths", nargs="+", default=["procache_core", "nodes"],
                    help="the code the results describe (default: procache_core nodes)")
    a = ap.parse_args(argv)
    res = ROOT / "benchmarks" / "results"
    files = a.files or sorted(res.glob("*.md")) + sorted((res / "sections").glob("*.md"))
    print(table([f.resolve() for f in files], a.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
