"""benchmarks/regenerate.py: the one list of results generators covers every committed results file."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from benchmarks import compile as compile_bench
from benchmarks import regenerate
from benchmarks.common import raw_stamp, run_commit_and_date

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def _committed_results() -> set[str]:
    return {str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*") if p.is_file()}


def test_every_committed_results_file_has_a_generator_or_says_where_it_comes_from():
    written = {w for g in regenerate.GENERATORS for w in g.writes} | set(regenerate.MADE_ELSEWHERE)
    orphans = sorted(_committed_results() - written)
    assert not orphans, f"results files no generator writes (add one to benchmarks/regenerate.py): {orphans}"


def test_every_listed_output_exists():
    # a generator renamed or a file deleted leaves the list pointing at nothing
    missing = sorted(({w for g in regenerate.GENERATORS for w in g.writes} | set(regenerate.MADE_ELSEWHERE))
                     - _committed_results())
    assert not missing, missing


@pytest.mark.parametrize("gen", regenerate.GENERATORS, ids=lambda g: g.name)
def test_every_generator_module_exists_and_takes_its_flags(gen):
    for argv in (gen.argv, *gen.parallel_with):
        spec = importlib.util.find_spec(argv[0])
        assert spec is not None and spec.origin, argv[0]
        source = Path(spec.origin).read_text(encoding="utf-8")
        for flag in (a for a in argv[1:] if a.startswith("--")):
            assert f'"{flag}"' in source, f"{argv[0]} has no option {flag}"
        # what it writes names the commit it ran at (make results-age reads that back)
        assert re.search(r"raw_stamp|made_stamp|write_results|stamp_raw|head_commit|git_commit|machine_info",
                         source), f"{argv[0]} writes no commit stamp"


def test_pick_keeps_list_order_and_names_unknown_generators():
    assert [g.name for g in regenerate.pick("forecast,quick", "")] == ["quick", "forecast"]
    assert "quick" not in [g.name for g in regenerate.pick("", "quick")]
    with pytest.raises(SystemExit, match="nosuch.*choose from"):
        regenerate.pick("nosuch", "")


def test_raw_stamp_reads_the_commit_wherever_the_bench_put_it():
    assert run_commit_and_date({"info": {"git_commit": "abc1234", "date_utc": "2026-12-04 01:00 UTC"}}) == \
        ("abc1234", "2026-12-04 01:00 UTC")
    assert run_commit_and_date({"commit": "def5678", "date": "2026-12-04"}) == ("def5678", "2026-12-04")
    assert "commit `def5678` on 2026-12-04" in raw_stamp({"commit": "def5678", "date": "2026-12-04"}, "x")
    old = raw_stamp({"rows": []}, "python -m benchmarks.selective")
    assert "not known" in old and "commit `" not in old  # results-age then lists it as naming no commit


def test_compile_results_keep_the_other_widths_and_the_reading():
    text = "# T\n\n## Hidden 512\n\nold 512\n\n## Reading\n\nprose\n"
    out = compile_bench.with_section(text, 256, "## Hidden 256\n\nnew 256")
    assert out.index("## Hidden 256") < out.index("## Hidden 512") < out.index("## Reading")
    assert "old 512" in out and "prose" in out
    again = compile_bench.with_section(out, 512, "## Hidden 512\n\nnew 512")
    assert "old 512" not in again and "new 256" in again and again.count("## Hidden") == 2


def test_a_regenerated_table_keeps_the_hand_written_reading(tmp_path):
    from benchmarks.common import keep_reading

    old = tmp_path / "r.md"
    old.write_text("# T\n\n| a |\n|---|\n| 1 |\n\n**Reading.** Row a is 1 because ...\n")
    new = keep_reading("# T\n\n| a |\n|---|\n| 2 |\n", old)
    assert new.endswith("**Reading.** Row a is 1 because ...\n") and "| 2 |" in new and "| 1 |" not in new
    assert keep_reading("# T\n\n**Reading.** generated\n", old).count("**Reading.**") == 1
    assert keep_reading("# T\n", tmp_path / "none.md") == "# T\n"


def test_a_tree_outside_git_takes_its_commit_from_the_sender(monkeypatch):
    """A GPU machine gets the working tree without git: PROCACHE_BENCH_COMMIT names the commit, and
    anything that is not a commit id is ignored (no stamp rather than a wrong one)."""
    from benchmarks import common

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(common.subprocess, "run", no_git)
    monkeypatch.setenv("PROCACHE_BENCH_COMMIT", "49e5a04c0ffee")
    assert common.code_commit(7) == "49e5a04"
    assert common.head_commit() == "49e5a04"
    monkeypatch.setenv("PROCACHE_BENCH_COMMIT", "HEAD; rm -rf")
    assert common.code_commit(7) is None and common.head_commit() == "unknown"
    monkeypatch.delenv("PROCACHE_BENCH_COMMIT")
    assert common.code_commit() is None
