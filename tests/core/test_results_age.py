"""scripts/results_age.py: which commit each results section names and how much code landed since."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import results_age  # noqa: E402


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture()
def two_commits() -> tuple[str, str]:
    try:
        head, older = _git("rev-parse", "--short=7", "HEAD"), _git("rev-parse", "--short=7", "HEAD~3")
    except subprocess.CalledProcessError:
        pytest.skip("needs a git checkout with history")
    return head, older


def test_sections_take_their_own_commit_or_the_file_stamp(tmp_path, two_commits):
    head, older = two_commits
    md = tmp_path / "r.md"
    md.write_text(f"# Bench\n\nMade at commit `{head}` on 2026-12-03.\n\n## A\n\nrows\n\n"
                  f"## B\n\nrerun at commit {older}+dirty\n\n### B.1\n\n## C\n\ngit_commit | deadbee\n")
    got = {s.title: (s.commits, s.inherited) for s in results_age.sections(md, root=tmp_path)}
    assert got["Bench"] == ([head], False)
    assert got["A"] == ([head], True)
    assert got["B"] == ([older], False)          # ### stays inside its ##
    assert "B.1" not in got
    assert got["C"] == (["deadbee"], False)
    assert results_age.newest([older, head]) == head
    assert results_age.newest(["deadbee"]) is None


def test_table_counts_code_commits_since(tmp_path, two_commits):
    head, older = two_commits
    md = tmp_path / "r.md"
    md.write_text(f"# X\n\ncommit `{head}`\n\n## Old\n\ncommit `{older}`\n\n## Unknown\n\ncommit `deadbee`\n\n"
                  "# Y\n\n## Unstamped\n\nno stamp\n")
    text = results_age.table([md], ["."])
    assert f"| {head} | 0 |" in text
    n = int(_git("rev-list", "--count", f"{older}..HEAD", "--", "."))
    assert n >= 3 and f"| {older} | {n} |" in text  # >= 3: a merge among them brings its branch's commits
    assert "| Unknown | deadbee | unknown commit |" in text
    assert "| Unstamped | - | no commit named |" in text


def test_a_bare_title_over_sections_is_not_listed_but_a_title_with_a_table_is(tmp_path, two_commits):
    head, _ = two_commits
    md = tmp_path / "r.md"
    md.write_text(f"# Title only\n\nprose\n\n## Stamped\n\ncommit `{head}`\n\n"
                  "# Title with a table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Next\n\ncommit `deadbee`\n")
    titles = [s.title for s in results_age.sections(md, root=tmp_path)]
    assert "Title only" not in titles           # holds no numbers: nothing to be stale
    assert "Title with a table" in titles       # its table names no commit: listed as such
    assert "| Title with a table | - | no commit named |" in results_age.table([md], ["."])
