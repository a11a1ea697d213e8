"""The search benches keep the proxy and the evaluation seeds apart, read the node's choice right, and their
tallies count what the rows say."""
from __future__ import annotations

import pytest

from benchmarks.quality import split_seeds
from benchmarks.search_host import node_choice
from benchmarks.search_space import summary


def test_one_seed_for_search_and_evaluation_is_refused():
    assert split_seeds(999, 1234) == (999, 1234)
    with pytest.raises(ValueError, match="proxy_seed and eval_seed"):
        split_seeds(7, 7)


def test_bench_runs_refuse_shared_seeds_before_any_work():
    from benchmarks import host_quality, noise_axis, search_host, search_space

    for fn, kw in ((search_space.run, {"proxy_seed": 3, "eval_seed": 3}),
                   (noise_axis.run, {"proxy_seed": 3, "eval_seed": 3}),
                   (host_quality.run, {"seed": 2, "search_on_seed": 2}),
                   (search_host.run, {"seed": 2, "search_on_seed": 2})):
        with pytest.raises(ValueError):
            fn(**kw)


def test_node_choice_follows_the_report():
    rep = ("ProCache search: 10 steps, budget 4 full, 2 candidates, rel_l2\n"
           "  FCCFCCFCFC  rel_l2=0.05000\n* FCCCFCCFCF  rel_l2=0.03000\n  uniform FCFCCFCCFC  rel_l2=0.04000\n"
           "best rel_l2=0.03000 vs uniform rel_l2=0.04000: better than uniform")
    assert node_choice(rep, "FCFCCFCCFC") == "FCCCFCCFCF"
    rep_u = rep.replace("0.04000", "0.02000") + "\nchosen: uniform FCFCCFCCFC (it scored better)"
    assert node_choice(rep_u, "FCFCCFCCFC") == "FCFCCFCCFC"
    rep_p = rep.replace("* FCCCFCCFCF", "  FCCCFCCFCF") + "\n* profile FCFCFCCCFC  rel_l2=0.01000  (one-run)"
    assert node_choice(rep_p, "FCFCCFCCFC") == "FCFCFCCCFC"


def test_summary_counts_wins_losses_and_ties():
    def row(s, p, f):
        return {"schedule": s, "psnr": p, "fd_full": f}

    res = {"spacings": {"a": {"settings": [
        {"rows": {"uniform": row("U", 20, 5), "sampled-ni": row("A", 30, 2), "sampled-any": row("B", 31, 1),
                  "profile-ni": row("A", 30, 2), "profile-any": row("C", 25, 3)}},
        {"rows": {"uniform": row("U", 20, 5), "sampled-ni": row("A", 30, 2), "sampled-any": row("A", 30, 2),
                  "profile-ni": row("D", 29, 1), "profile-any": row("E", 28, 4)}}]}}}
    s = summary(res)
    assert s["any_vs_ni"]["sampled"] == [1, 0, 1]
    assert s["any_vs_ni"]["profile"] == [0, 2, 0]
    assert s["profile_vs_sampled"]["ni"] == [0, 0, 2]  # same schedule, then mixed (lower PSNR, lower FD)
    assert s["profile_vs_sampled"]["any"] == [0, 2, 0]
    assert s["means"]["sampled-any"]["psnr"] == pytest.approx(30.5)
