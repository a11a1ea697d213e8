"""TokenSelector: attention-free scores, spread, staleness, determinism."""
from __future__ import annotations

import pytest
import torch

from procache_core.engine import Branch, CacheRun
from procache_core.schedule import Schedule
from procache_core.settings import ScoreWeights, SelectiveSettings
from procache_core.tokens import TokenSelector, group_best, group_side, num_tokens


ONLY = {
    "staleness": ScoreWeights(staleness=1.0, input_change=0.0, output_norm=0.0, spatial=0.0),
    "input_change": ScoreWeights(staleness=0.0, input_change=1.0, output_norm=0.0, spatial=0.0),
    "output_norm": ScoreWeights(staleness=0.0, input_change=0.0, output_norm=1.0, spatial=0.0),
}


def test_num_tokens_and_group_side():
    assert num_tokens(0.0, 100) == 0
    assert num_tokens(0.3, 10) == 3          # no float round-up to 4
    assert num_tokens(0.07, 256) == 18       # ceil
    assert num_tokens(1.0, 64) == 64
    assert num_tokens(1e-9, 64) == 1
    assert group_side(64, 16) == 2 and group_side(256, 18) == 4 and group_side(64, 64) == 1


def test_ties_break_to_lower_index_deterministically():
    scores = torch.zeros(3, 50)
    idx = TokenSelector.select(scores, 7)
    assert torch.equal(idx, torch.arange(7).expand(3, 7))
    scores[1, 40] = 1.0
    idx = TokenSelector.select(scores, 3)
    assert idx[1].tolist() == [0, 1, 40]
    assert idx.dtype == torch.int64


def test_input_change_picks_moved_tokens():
    sel = TokenSelector(ONLY["input_change"])
    ref = torch.randn(2, 16, 8)
    x = ref.clone()
    x[0, 5] += 3.0
    x[1, 11] += 0.5 * ref[1, 11]
    idx = sel(step=1, k=1, x_in=x, input_ref=ref)
    assert idx.tolist() == [[5], [11]]


def test_output_norm_picks_large_outputs():
    sel = TokenSelector(ONLY["output_norm"])
    out = torch.ones(1, 16, 4)
    out[0, 9] *= 10
    assert sel(step=1, k=1, cached=[out]).tolist() == [[9]]


def test_staleness_grows_and_rotates_through_all_tokens():
    """With staleness only, picks rotate: after N/k selective steps every token was refreshed once."""
    n, c = 16, 4
    schedule = Schedule.from_string("F" + "S" * 4)
    run = CacheRun(schedule, SelectiveSettings(ratio=0.25, start_block=0, weights=ONLY["staleness"]), num_blocks=1)
    mlp = torch.nn.Linear(c, c)
    x = torch.randn(2, n, c)
    with torch.no_grad():
        for step in range(5):
            run.begin_step(step)
            run.run_block(0, x, [Branch("mlp", mlp, None, token_local=True)])
            entry = run.cache.stream(None).blocks[0]
            if step:
                age = step - entry.last_refresh
                assert int((age == 0).sum()) == 2 * 4  # k fresh tokens per row
    expected = torch.arange(1, 5, dtype=torch.int32).repeat_interleave(4).expand(2, n)
    assert torch.equal(entry.last_refresh, expected)
    sel = TokenSelector(ONLY["staleness"])
    scores = sel.scores(step=9, k=4, last_refresh=entry.last_refresh)
    assert torch.all(scores[:, :4] > scores[:, -4:])  # older entries score higher


def _group_counts(idx: torch.Tensor, h: int, w: int, g: int) -> torch.Tensor:
    rows, cols = idx // w, idx % w
    group = (rows // g) * ((w + g - 1) // g) + cols // g
    return torch.stack([torch.bincount(r, minlength=((h + g - 1) // g) * ((w + g - 1) // g)) for r in group])


def test_spatial_bonus_spreads_picks_over_grid():
    torch.manual_seed(0)
    h = w = 8
    out = torch.rand(4, h * w, 8) + 0.1
    k = 16  # -> 2x2 groups, exactly 16 of them
    clumpy = TokenSelector(ONLY["output_norm"], grid_hw=(h, w))(step=1, k=k, cached=[out])
    spread = TokenSelector(ScoreWeights(0.0, 0.0, 1.0, spatial=2.0), grid_hw=(h, w))(step=1, k=k, cached=[out])
    assert torch.all(_group_counts(spread, h, w, 2) == 1)  # one pick in every 2x2 group
    assert torch.any(_group_counts(clumpy, h, w, 2) > 1)


def test_group_best_handles_ragged_grids_and_1d():
    scores = torch.rand(2, 5 * 7)
    best = group_best(scores, 2, (5, 7))
    # one winner per group: ceil(5/2) * ceil(7/2) groups
    assert int(best[0].sum()) == 3 * 4
    best1d = group_best(scores, 2, None)  # groups of 4 consecutive tokens
    assert int(best1d[0].sum()) == 9
    assert torch.equal(group_best(scores, 1, None), torch.ones_like(best1d))


def test_chunks_average_scores_and_share_indices():
    sel = TokenSelector(ONLY["output_norm"])
    out = torch.rand(4, 32, 8)
    idx = sel(step=1, k=5, chunks=2, cached=[out])
    assert torch.equal(idx[:2], idx[2:])
    mean_norm = (out.norm(dim=-1)[:2] / out.norm(dim=-1)[:2].amax(-1, keepdim=True)
                 + out.norm(dim=-1)[2:] / out.norm(dim=-1)[2:].amax(-1, keepdim=True)) / 2
    expect = torch.sort(torch.topk(mean_norm, 5).indices, dim=-1).values
    assert torch.equal(idx[:2], expect)


def test_scores_are_float32_for_low_precision_inputs():
    sel = TokenSelector()
    x = torch.randn(2, 64, 8, dtype=torch.bfloat16)
    s = sel.scores(step=3, k=8, last_refresh=torch.zeros(2, 64, dtype=torch.int32), x_in=x,
                   input_ref=x * 0.9, cached=[x], grid_hw=(8, 8))
    assert s.dtype == torch.float32 and s.shape == (2, 64) and torch.isfinite(s).all()


def test_stratified_tie_break_spreads_tied_picks_over_the_grid_and_repeats():
    """All tokens tie (every one refreshed at the same step): index order takes the first rows, the
    stratified order one token from each group of the grid, a different set on the next step, the same
    set again for the same step."""
    h = w = 16
    n, k = h * w, 16
    refresh = torch.zeros(1, n, dtype=torch.int32)
    plain = TokenSelector(ONLY["staleness"], grid_hw=(h, w))(step=3, k=k, last_refresh=refresh)
    assert plain[0].tolist() == list(range(k))
    strat = TokenSelector(ONLY["staleness"], grid_hw=(h, w), tie_break="stratified")
    a = strat(step=3, k=k, last_refresh=refresh)[0]
    groups = {(int(i) // w // 4, int(i) % w // 4) for i in a}
    assert len(groups) == k                      # one pick in each 4x4 group
    again = TokenSelector(ONLY["staleness"], grid_hw=(h, w), tie_break="stratified")(step=3, k=k, last_refresh=refresh)
    assert torch.equal(again[0], a)
    b = strat(step=4, k=k, last_refresh=refresh + 1)[0]
    assert not torch.equal(a, b)
    # a real score difference still wins over the tie-break: stale tokens first
    stale = refresh.clone()
    stale[0, 200:] = -5
    c = strat(step=3, k=k, last_refresh=stale)[0]
    assert all(int(i) >= 200 for i in c)


def test_tie_break_setting_is_checked_by_name():
    from procache_core.errors import ProCacheError
    from procache_core.settings import SelectiveSettings

    with pytest.raises(ProCacheError) as e:
        SelectiveSettings(tie_break="random").validate()
    assert e.value.field == "tie_break"
    assert SelectiveSettings.from_dict({"tie_break": "stratified"}).tie_break == "stratified"
