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


# -- value norm ---------------------------------------------------------------------------------------

VALUE = ScoreWeights(staleness=1.0, input_change=0.0, output_norm=0.0, spatial=0.0, value_norm=1.0)


def test_value_norm_ranks_tokens_by_their_cached_attention_rows():
    torch.manual_seed(1)
    values = torch.rand(2, 16, 8) * 0.1
    values[0, [3, 12]] *= 40
    values[1, [0, 9]] *= 40
    refresh = torch.zeros(2, 16, dtype=torch.int32)  # every token ties on staleness
    picked = TokenSelector(VALUE)(step=2, k=2, last_refresh=refresh, values=[values])
    assert picked.tolist() == [[3, 12], [0, 9]]
    # without the weight the same inputs fall back to the tie order: value rows are what moved the pick
    plain = TokenSelector(ONLY["staleness"])(step=2, k=2, last_refresh=refresh, values=[values])
    assert plain.tolist() == [[0, 1], [0, 1]]
    # staleness still counts: a token refreshed long ago beats a large value row
    refresh[0, 5] = -30
    assert 5 in TokenSelector(VALUE)(step=2, k=2, last_refresh=refresh, values=[values])[0].tolist()


def test_engine_scores_value_norm_from_the_token_mixing_branch():
    """In a block with an attention branch (mixes tokens) and an MLP, the value-norm score reads the cached
    attention output: the tokens with the largest attention rows are the ones a selective step recomputes."""
    n, c = 16, 4
    big = torch.tensor([2, 11])
    attn_out = torch.full((1, n, c), 0.01)
    attn_out[0, big] = 5.0
    mlp = torch.nn.Linear(c, c)
    branches = [Branch("attn", lambda h: attn_out.expand(h.shape[0], -1, -1).clone(), None, token_local=False),
                Branch("mlp", mlp, None, token_local=True)]

    def refreshed(weights: ScoreWeights) -> list[int]:
        run = CacheRun(Schedule.from_string("FS"), SelectiveSettings(ratio=2 / n, start_block=0, weights=weights),
                       num_blocks=1)
        x = torch.randn(1, n, c)
        with torch.no_grad():
            for step in range(2):
                run.begin_step(step)
                run.run_block(0, x, branches)
        return torch.nonzero(run.cache.stream(None).blocks[0].last_refresh[0] == 1).flatten().tolist()

    assert refreshed(VALUE) == big.tolist()
    assert refreshed(ONLY["staleness"]) == [0, 1]


def test_value_norm_and_image_first_settings_are_checked_by_name():
    from procache_core.errors import ProCacheError
    from procache_core.tokens import TextTokens

    with pytest.raises(ProCacheError) as e:
        SelectiveSettings(weights=ScoreWeights(value_norm=-1.0)).validate()
    assert e.value.field == "weights.value_norm"
    with pytest.raises(ProCacheError) as e:
        SelectiveSettings(weights=ScoreWeights(value_norm="big")).validate()  # type: ignore[arg-type]
    assert e.value.field == "weights.value_norm" and "not a number" in str(e.value)
    with pytest.raises(ProCacheError) as e:
        SelectiveSettings.from_dict({"weights": {"value_norm": "big"}})
    assert e.value.field == "selective"
    with pytest.raises(ProCacheError) as e:
        SelectiveSettings.from_dict({"image_first": "yes"})
    assert e.value.field == "selective.image_first"
    with pytest.raises(ProCacheError) as e:
        SelectiveSettings(image_first=1).validate()  # type: ignore[arg-type]
    assert e.value.field == "image_first"
    s = SelectiveSettings.from_dict({"weights": {"value_norm": 0.5}, "image_first": True})
    assert s.weights.value_norm == 0.5 and s.image_first is True
    assert SelectiveSettings.from_dict({}).image_first is False   # presets without the key: the paper's order
    with pytest.raises(ProCacheError) as e:
        TextTokens(5, 2).check()
    assert e.value.field == "text_tokens"
    run = CacheRun(Schedule.from_string("FS"), SelectiveSettings(), num_blocks=1)
    with pytest.raises(ProCacheError) as e:
        run.set_stream("s", 1, text_tokens=(0, 4, -1))
    assert e.value.field == "text_tokens"


# -- image tokens before text tokens ----------------------------------------------------------------------

def test_ties_pick_image_tokens_before_text_unless_text_scores_higher():
    n, k = 24, 6
    refresh = torch.zeros(2, n, dtype=torch.int32)
    text = (0, 8)  # Flux single blocks: the prompt first
    first = TokenSelector(ONLY["staleness"], image_first=True)(step=1, k=k, last_refresh=refresh, text=text)
    assert first.tolist() == [list(range(8, 8 + k))] * 2        # image tokens, then the lower index
    seq = TokenSelector(ONLY["staleness"], image_first=False)(step=1, k=k, last_refresh=refresh, text=text)
    assert seq.tolist() == [list(range(k))] * 2                   # sequence order: the text tokens
    no_range = TokenSelector(ONLY["staleness"], image_first=True)(step=1, k=k, last_refresh=refresh)
    assert no_range.tolist() == [list(range(k))] * 2             # no text range: index order
    stale = refresh.clone()
    stale[0, 3] = -4  # a stale text token scores higher: it goes first
    picked = TokenSelector(ONLY["staleness"], image_first=True)(step=1, k=k, last_refresh=stale, text=text)
    assert picked[0].tolist() == [3] + list(range(8, 8 + k - 1))
    ranked = TokenSelector(ONLY["staleness"], image_first=True).rank(step=1, k=k, last_refresh=stale, text=text)
    assert ranked[0, 0] == 3 and ranked[1].tolist() == list(range(8, 8 + k))
    # text in the middle or at the end (image first in the sequence) works the same
    tail = TokenSelector(ONLY["staleness"], image_first=True)(step=1, k=k, last_refresh=refresh, text=(20, 24))
    assert tail.tolist() == [list(range(k))] * 2
    mid = TokenSelector(ONLY["staleness"], image_first=True)(step=1, k=k, last_refresh=refresh, text=(2, 10))
    assert mid.tolist() == [[0, 1, 10, 11, 12, 13]] * 2


def test_stratified_ties_take_image_tokens_first_spread_over_the_image_grid():
    h = w = 8
    n_txt, k = 16, 16
    n = n_txt + h * w
    refresh = torch.zeros(1, n, dtype=torch.int32)
    sel = TokenSelector(ONLY["staleness"], grid_hw=(h, w), tie_break="stratified", image_first=True)
    idx = sel(step=3, k=k, last_refresh=refresh, text=(0, n_txt), grid_hw=(h, w))[0]
    assert all(int(i) >= n_txt for i in idx)
    img = idx - n_txt
    assert len({(int(i) // w // 2, int(i) % w // 2) for i in img}) == k   # one pick per 2x2 group of the grid
    assert torch.equal(idx, sel(step=3, k=k, last_refresh=refresh, text=(0, n_txt), grid_hw=(h, w))[0])
    seq = TokenSelector(ONLY["staleness"], grid_hw=(h, w), tie_break="stratified", image_first=False)
    assert any(int(i) < n_txt for i in seq(step=3, k=k, last_refresh=refresh, text=(0, n_txt))[0])


def test_engine_applies_the_stream_text_range_from_its_first_block_on():
    """set_stream(text_tokens=(0, T, first_block)): blocks from first_block on pick image tokens on ties;
    earlier blocks (Flux double blocks: image or text stream alone) and blocks shorter than the range keep
    index order."""
    n, c, t = 16, 4, 6
    mlp = torch.nn.Linear(c, c)

    def picks(text_tokens, image_first=True, tokens=n) -> list[list[int]]:
        run = CacheRun(Schedule.from_string("FS"), SelectiveSettings(ratio=4 / tokens, start_block=0,
                                                                    weights=ONLY["staleness"],
                                                                    image_first=image_first), num_blocks=2)
        x = torch.randn(1, tokens, c)
        with torch.no_grad():
            for step in range(2):
                run.begin_step(step)
                run.set_stream("s", 1, text_tokens=text_tokens)
                for b in range(2):
                    run.run_block(b, x, [Branch("mlp", mlp, None, token_local=True)])
        blocks = run.cache.stream("s").blocks
        return [torch.nonzero(blocks[b].last_refresh[0] == 1).flatten().tolist() for b in range(2)]

    assert picks((0, t, 1)) == [[0, 1, 2, 3], [6, 7, 8, 9]]
    assert picks((0, t, 0)) == [[6, 7, 8, 9]] * 2
    assert picks((0, t, 1), image_first=False) == [[0, 1, 2, 3]] * 2
    assert picks(None) == [[0, 1, 2, 3]] * 2
    assert picks((0, 20, 0)) == [[0, 1, 2, 3]] * 2   # 16 tokens < the range's end: not a joint block
