"""The selection policy (oto_hf.selection) on its own: the layouts, the floor and the saliencies, given made-up
saliency averages, without an optimizer."""

import math

import pytest
import torch
from transformers import BertForQuestionAnswering

from conftest import tiny_bert_config
from oto_hf import zero_invariant_groups
from oto_hf.groups import HEAD, NEURON
from oto_hf.selection import Goal, LatencyLayout, MixedSaliency, Pools, StreamCosts, TimeBudget, fill_budget
from oto_hf.settings import OTOSettings


SEQ = 32


def model_groups(**config):
    torch.manual_seed(0)
    return zero_invariant_groups(BertForQuestionAnswering(tiny_bert_config(**config)))


def choose(groups, taylor, target, allocation, layer_floor=0.0, period=0, num_periods=1, saliency="taylor",
           direction=None):
    """The redundant groups the policy named by these settings chooses for `period`, from the averages given."""
    settings = OTOSettings(target=target, prune_steps=10, num_periods=num_periods, allocation=allocation,
                           layer_floor=layer_floor, saliency=saliency, seq_len=SEQ)
    averages = {"taylor": taylor, "direction": torch.zeros_like(taylor) if direction is None else direction}
    pools = Pools.of(groups, groups.costs("flops", SEQ), torch.device("cpu"))
    goal = Goal(target=target, period=period, num_periods=num_periods, total_cost=groups.total_cost("flops", SEQ))
    return settings.selection_policy().choose(groups.is_zero(), groups.sq_norms(), averages, pools, goal)


def layer_relative(groups, score, kind):
    """Reference for the balanced ranking: the score over its (kind, layer) mean, for the groups of `kind`."""
    out = {}
    for layer in range(groups.num_layers):
        idx = torch.nonzero((groups.kinds == kind) & (groups.layers == layer)).flatten()
        for i in idx.tolist():
            out[i] = float(score[i] / score[idx].mean())
    return out


def test_balanced_layout_shares_the_target_and_ranks_within_each_kind():
    groups = model_groups()
    g = torch.Generator().manual_seed(3)
    # Layer 1 scores run 100x larger as a whole: a raw ranking would spare it; a layer-relative one must not.
    score = torch.rand(groups.num_groups, generator=g) + 0.05
    score[groups.layers == 1] *= 100
    chosen = choose(groups, score, target=0.4, allocation="balanced", num_periods=2)
    costs = groups.costs("flops", SEQ).double()
    goal = 0.2 * groups.total_cost("flops", SEQ)  # period 0 of 2 holds half of the 40% target
    neuron_cost = float(costs[groups.kinds == NEURON][0])
    head_cost = float(costs[groups.kinds == HEAD][0])
    assert goal - neuron_cost <= float(costs[chosen].sum()) <= goal + 1e-6
    for kind, unit in ((HEAD, head_cost), (NEURON, neuron_cost)):
        of_kind = groups.kinds == kind
        share = float(costs[chosen & of_kind].sum()) / float(costs[of_kind].sum())
        # Each kind gives up the period's fraction; heads to within one head, neurons also fill the remainder.
        assert abs(share - 0.2) <= (unit + head_cost) / float(costs[of_kind].sum()), (kind, share)
    heads = layer_relative(groups, score, HEAD)
    kept_heads = [heads[i] for i in heads if not chosen[i]]
    cut_heads = [heads[i] for i in heads if chosen[i]]
    assert cut_heads and max(cut_heads) <= min(kept_heads)
    assert chosen[groups.layers == 1].any(), "a layer with larger raw scores must still be pruned"


def test_uniform_layout_removes_the_same_fraction_of_every_layer():
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    g = torch.Generator().manual_seed(4)
    # Layer 1's scores run 100x larger and layer 0's heads are all nearly useless: neither may change the layout.
    score = torch.rand(groups.num_groups, generator=g) + 0.05
    score[groups.layers == 1] *= 100
    score[(groups.layers == 0) & (groups.kinds == HEAD)] *= 1e-3
    chosen = choose(groups, score, target=0.6, allocation="uniform")
    costs = groups.costs("flops", SEQ).double()
    neuron_cost = float(costs[groups.kinds == NEURON][0])
    goal = 0.6 * groups.total_cost("flops", SEQ)
    assert goal - neuron_cost <= float(costs[chosen].sum()) <= goal + 1e-6
    for layer in range(groups.num_layers):
        in_layer = groups.layers == layer
        layer_goal = 0.6 * float(costs[in_layer].sum())
        assert layer_goal - neuron_cost <= float(costs[chosen & in_layer].sum()) <= layer_goal + 1e-6, layer
        heads = torch.nonzero(in_layer & (groups.kinds == HEAD)).flatten()
        assert int(chosen[heads].sum()) == round(0.6 * len(heads)), (layer, int(chosen[heads].sum()))
        for kind in (HEAD, NEURON):  # within a layer, the least salient go first
            pool = torch.nonzero(in_layer & (groups.kinds == kind)).flatten()
            cut = chosen[pool]
            assert float(score[pool[cut]].max()) <= float(score[pool[~cut]].min()), (layer, kind)


def test_uniform_layout_tops_up_only_in_the_last_period():
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    score = torch.rand(groups.num_groups, generator=torch.Generator().manual_seed(7)) + 0.05
    costs = groups.costs("flops", SEQ).double()
    total = groups.total_cost("flops", SEQ)
    first = choose(groups, score, target=0.6, allocation="uniform", period=0, num_periods=3)
    last = choose(groups, score, target=0.6, allocation="uniform", period=2, num_periods=3)
    # Early periods may stop short (heads rounded down), never over; the last one meets the goal within a neuron.
    assert float(costs[first].sum()) <= 0.2 * total + 1e-6
    assert 0.6 * total - float(costs[groups.kinds == NEURON][0]) <= float(costs[last].sum()) <= 0.6 * total + 1e-6


def test_layer_floor_keeps_every_layer_above_it_and_changes_nothing_where_it_does_not_bind():
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    g = torch.Generator().manual_seed(5)
    # In layer 0 one head and one neuron carry all the score: relative to their layer's mean, the others look
    # useless, so the balanced ranking empties layer 0 down to that one head and a few neurons.
    score = torch.rand(groups.num_groups, generator=g) + 0.5
    for kind in (HEAD, NEURON):
        pool = torch.nonzero((groups.layers == 0) & (groups.kinds == kind)).flatten()
        score[pool] *= 1e-3
        score[pool[0]] = 1e3

    def chosen_with(layer_floor, target=0.6):
        return choose(groups, score, target=target, allocation="balanced", layer_floor=layer_floor)

    free = chosen_with(0.0)
    kept_heads_layer0 = int((~free & (groups.layers == 0) & (groups.kinds == HEAD)).sum())
    assert kept_heads_layer0 < 3, "the setup must let the balanced ranking go below the floor tested next"

    chosen = chosen_with(0.3)
    costs = groups.costs("flops", SEQ).double()
    neuron_cost = float(costs[groups.kinds == NEURON][0])
    goal = 0.6 * groups.total_cost("flops", SEQ)
    assert goal - neuron_cost <= float(costs[chosen].sum()) <= goal + 1e-6, "the floor must not cost the target"
    for layer in range(groups.num_layers):
        for kind, floor in ((HEAD, 2), (NEURON, 28)):  # ⌊0.3 · 8⌋ heads, ⌊0.3 · 96⌋ neurons
            pool = torch.nonzero((groups.layers == layer) & (groups.kinds == kind)).flatten()
            cut = chosen[pool]
            assert int((~cut).sum()) >= floor, (layer, kind, int((~cut).sum()))
            assert float(score[pool[cut]].max()) <= float(score[pool[~cut]].min()), "least salient go first"
    # A floor above what the target leaves is lowered to it (0.9 acts as 0.4 at a 60% target). There rounding leaves
    # the pools above the floors a little short, and the target still comes first.
    tight = chosen_with(0.9)
    assert goal - neuron_cost <= float(costs[tight].sum()) <= goal + 1e-6
    assert int((~tight & (groups.layers == 0) & (groups.kinds == HEAD)).sum()) >= 3  # ⌊0.4 · 8⌋
    # A floor below every layer's kept share does not change the choice at all.
    assert torch.equal(chosen_with(0.05, target=0.3), chosen_with(0.0, target=0.3))


def test_mixed_saliency_mixes_five_criteria_scaled_within_each_pool():
    groups = model_groups()
    g = torch.Generator().manual_seed(6)
    averages = {"taylor": torch.rand(groups.num_groups, generator=g),
                "direction": 2 * torch.rand(groups.num_groups, generator=g)}
    sq = groups.sq_norms()
    alive = torch.ones(groups.num_groups, dtype=torch.bool)
    alive[3] = False  # a zero group takes no part in its pool's scale
    pools = Pools.of(groups, groups.costs("flops", SEQ), torch.device("cpu"))
    mixed = MixedSaliency().importance(averages, sq, alive, pools)
    for layer in range(groups.num_layers):
        for kind in (HEAD, NEURON):
            pool = torch.nonzero((groups.layers == layer) & (groups.kinds == kind) & alive).flatten()
            size = float(groups.sizes[pool[0]])
            norm, taylor = sq[pool].double().sqrt(), averages["taylor"][pool].double()
            criteria = [norm, norm / size, averages["direction"][pool].double(), taylor, 0.5 * taylor**2]
            by_hand = sum(c / c.norm() for c in criteria) / 5
            torch.testing.assert_close(mixed[pool], by_hand)

    # Each criterion is scaled within its pool: scores of one layer running 100× larger change nothing.
    before = choose(groups, averages["taylor"], 0.5, "uniform", saliency="mixed", direction=averages["direction"])
    larger = averages["taylor"].clone()
    larger[groups.layers == 1] *= 100
    after = choose(groups, larger, 0.5, "uniform", saliency="mixed", direction=averages["direction"])
    assert torch.equal(before, after) and before.any()


@pytest.mark.parametrize("budget,expected", [(10.0, [0, 1, 2]), (9.0, [0, 1, 3, 4]), (3.5, [0, 3]), (0.0, []),
                                             (-1.0, [])])
def test_fill_budget_never_overshoots_and_fills_with_later_cheaper_items(budget, expected):
    costs = torch.tensor([3.0, 3.0, 4.0, 0.5, 0.5], dtype=torch.float64)
    assert sorted(fill_budget(costs, budget).tolist()) == expected


def test_goal_of_a_period():
    goal = Goal(target=0.6, period=1, num_periods=4, total_cost=200.0)
    assert (goal.cost_now, goal.final_cost, goal.fraction_done, goal.last_period) == (60.0, 120.0, 0.5, False)
    assert Goal(target=0.6, period=3, num_periods=4, total_cost=200.0).last_period


# ---- a speed target: the policy spends a TimeBudget ----


def block_curves(overhead, head_slope=0.1, neuron_slope=0.01):
    """Made-up block times: a block with any group left costs `overhead` (per-operator cost, saved only by emptying
    it) plus a time per group."""

    def block_seconds(kind, kept):
        slope = head_slope if kind == HEAD else neuron_slope
        return torch.where(kept > 0, overhead + slope * kept, torch.zeros_like(kept))
    return block_seconds


def time_budget(groups, speedup, overhead, fixed=1.0, **slopes):
    block_seconds = block_curves(overhead, **slopes)
    dense = fixed + sum(
        float(block_seconds(kind, torch.tensor(counts, dtype=torch.float64)).sum())
        for kind, counts in ((HEAD, groups.heads_per_layer), (NEURON, groups.neurons_per_layer)))
    return TimeBudget(block_seconds=block_seconds, fixed_seconds=fixed, dense_seconds=dense,
                      target_seconds=dense / speedup)


def choose_for_time(groups, budget, score, zero, allocation, period=0, num_periods=1, layer_floor=0.25):
    settings = OTOSettings(speedup=2.0, prune_steps=10, num_periods=num_periods, allocation=allocation,
                           layer_floor=layer_floor, seq_len=SEQ)
    averages = {"taylor": score, "direction": torch.zeros_like(score)}
    pools = Pools.of(groups, groups.costs("flops", SEQ), torch.device("cpu"))
    goal = Goal(target=0.0, period=period, num_periods=num_periods, total_cost=groups.total_cost("flops", SEQ),
                time=budget)
    redundant = settings.selection_policy().choose(zero, groups.sq_norms(), averages, pools, goal)
    assert not (redundant & zero).any(), "a zero group is never chosen again"
    return redundant, pools, goal


def kept_per_pool(groups, removed):
    """{(kind, layer): (groups kept, groups in the pool)}."""
    out = {}
    for layer in range(groups.num_layers):
        for kind in (HEAD, NEURON):
            pool = (groups.layers == layer) & (groups.kinds == kind)
            out[kind, layer] = (int((pool & ~removed).sum()), int(pool.sum()))
    return out


def assert_no_pool_below_the_floor(groups, removed, layer_floor):
    for (kind, layer), (kept, size) in kept_per_pool(groups, removed).items():
        assert kept == 0 or kept >= math.floor(layer_floor * size + 1e-9), (kind, layer, kept, size)


@pytest.mark.parametrize("overhead", [0.0, 0.3])
@pytest.mark.parametrize("speedup,num_periods,layer_floor", [(1.3, 1, 0.25), (2.0, 3, 0.25), (3.0, 4, 0.25),
                                                             (2.0, 2, 0.5), (1.6, 3, 0.0)])
def test_latency_layout_meets_each_periods_predicted_time(speedup, num_periods, layer_floor, overhead):
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    budget = time_budget(groups, speedup, overhead)
    assert budget.dense_seconds / budget.fixed_seconds > speedup, "the setup must make the speedup reachable"
    score = torch.rand(groups.num_groups, generator=torch.Generator().manual_seed(11)) + 0.05
    zero = torch.zeros(groups.num_groups, dtype=torch.bool)
    for period in range(num_periods):  # as HSPG runs them: each period's redundant groups are zero in the next
        redundant, pools, goal = choose_for_time(groups, budget, score, zero, "latency", period, num_periods,
                                                 layer_floor)
        zero = zero | redundant
        predicted = budget.predict(zero, pools)
        assert predicted <= budget.seconds_at(goal.fraction_done) + 1e-9, (period, predicted)
        assert_no_pool_below_the_floor(groups, zero, layer_floor)
        for layer in range(groups.num_layers):  # within a pool the least salient go first
            for kind in (HEAD, NEURON):
                pool = torch.nonzero((groups.layers == layer) & (groups.kinds == kind)).flatten()
                cut = zero[pool]
                if cut.any() and (~cut).any():
                    assert float(score[pool[cut]].max()) <= float(score[pool[~cut]].min()), (layer, kind)
    assert budget.predict(zero, pools) <= budget.target_seconds + 1e-9


def test_latency_layout_empties_blocks_when_their_overhead_is_the_time_to_save():
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    # Each block costs 10 s as soon as it keeps a group, 1 ms per group: only emptying a block saves time worth
    # having. 6 blocks, 1 s fixed: dense ≈ 61 s; 1.25× asks for about 12 s, i.e. two emptied blocks.
    budget = time_budget(groups, 1.25, overhead=10.0, head_slope=1e-3, neuron_slope=1e-3)
    score = torch.rand(groups.num_groups, generator=torch.Generator().manual_seed(12)) + 0.05
    zero = torch.zeros(groups.num_groups, dtype=torch.bool)
    redundant, pools, goal = choose_for_time(groups, budget, score, zero, "latency")
    assert budget.predict(redundant, pools) <= budget.target_seconds + 1e-9
    kept = kept_per_pool(groups, redundant)
    emptied = [pool for pool, (left, size) in kept.items() if left == 0]
    assert len(emptied) == 2, kept
    assert all(left in (0, size) for left, size in kept.values()), f"no block is pruned part-way: {kept}"
    # The cost layouts cannot empty a block (the floor holds until the target nears everything): they remove far
    # more groups for the same predicted time, or cannot meet it at all.
    uniform, _, _ = choose_for_time(groups, budget, score, zero, "uniform")
    assert int(uniform.sum()) > int(redundant.sum()) or budget.predict(uniform, pools) > budget.target_seconds


def test_latency_layout_removes_nothing_when_the_time_is_already_met():
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    budget = time_budget(groups, 1.4, overhead=0.3)
    score = torch.rand(groups.num_groups, generator=torch.Generator().manual_seed(13)) + 0.05
    # Already zero: every neuron of two layers, which saves more than 1.4× asks for.
    zero = (groups.kinds == NEURON) & (groups.layers < 2)
    pools = Pools.of(groups, groups.costs("flops", SEQ), torch.device("cpu"))
    assert budget.predict(zero, pools) <= budget.target_seconds
    for period, num_periods in ((0, 1), (0, 3), (2, 3)):
        redundant, _, _ = choose_for_time(groups, budget, score, zero, "latency", period, num_periods)
        assert not redundant.any()


@pytest.mark.parametrize("allocation", ["uniform", "balanced"])
@pytest.mark.parametrize("speedup,num_periods,overhead", [(1.3, 1, 0.0), (1.8, 3, 0.0), (1.5, 2, 0.3)])
def test_cost_layouts_meet_the_final_predicted_time(allocation, speedup, num_periods, overhead):
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    budget = time_budget(groups, speedup, overhead)
    score = torch.rand(groups.num_groups, generator=torch.Generator().manual_seed(14)) + 0.05
    zero = torch.zeros(groups.num_groups, dtype=torch.bool)
    for period in range(num_periods):
        redundant, pools, _ = choose_for_time(groups, budget, score, zero, allocation, period, num_periods)
        zero = zero | redundant
        assert_no_pool_below_the_floor(groups, zero, 0.25)
    predicted = budget.predict(zero, pools)
    assert predicted <= budget.target_seconds + 1e-9, (predicted, budget.target_seconds)
    # The smallest cost share that meets it: not far beyond (within a head of every layer and a few neurons).
    assert predicted >= budget.target_seconds - 3 * (0.1 + overhead) - 0.1


def test_time_budget_predicts_from_the_groups_kept():
    groups = model_groups(num_attention_heads=8, intermediate_size=96)
    budget = time_budget(groups, 2.0, overhead=0.3)
    pools = Pools.of(groups, groups.costs("flops", SEQ), torch.device("cpu"))
    removed = (groups.kinds == HEAD) & (groups.layers == 0)  # layer 0's attention emptied
    removed[torch.nonzero((groups.kinds == NEURON) & (groups.layers == 1)).flatten()[:40]] = True
    kept = pools.kept_per_layer(removed)
    assert kept[HEAD].tolist() == [0.0, 8.0, 8.0] and kept[NEURON].tolist() == [96.0, 56.0, 96.0]
    expected = budget.dense_seconds - (0.3 + 0.8) - 40 * 0.01
    assert budget.predict(removed, pools) == pytest.approx(expected)
    assert budget.seconds_at(0.0) == budget.dense_seconds and budget.seconds_at(1.0) == budget.target_seconds
    assert budget.seconds_at(0.5) == pytest.approx((budget.dense_seconds + budget.target_seconds) / 2)


def test_the_latency_layout_spends_time_only():
    groups = model_groups()
    with pytest.raises(ValueError, match="'latency' allocation spends a speed target"):
        choose(groups, torch.rand(groups.num_groups), target=0.5, allocation=LatencyLayout())


# ---- with the stream's channels among the groups ----


@pytest.mark.parametrize("unit,target", [("flops", 0.9), ("params", 0.75)])
@pytest.mark.parametrize("allocation", ["uniform", "balanced"])
def test_the_stream_shares_the_target_and_the_exact_cost_meets_it(minilm_path, unit, target, allocation):
    """Real MiniLM, three periods chosen as HSPG would (each period's zero groups those chosen before): every period
    holds its share of the target and the last meets it to within one channel, counted exactly (heads and neurons
    narrow with the stream); the stream gives up channels, never below the floor; a chosen group stays chosen."""
    model = BertForQuestionAnswering.from_pretrained(minilm_path)
    groups = zero_invariant_groups(model, prune_hidden=True)
    settings = OTOSettings(target=target, target_unit=unit, seq_len=128, allocation=allocation, prune_steps=10,
                           saliency="magnitude")
    policy, total = settings.selection_policy(), groups.total_cost(unit, 128)
    pools = Pools.of(groups, groups.costs(unit, 128), torch.device("cpu"))
    zero, sq = torch.zeros(groups.num_groups, dtype=torch.bool), groups.sq_norms()
    for period in range(3):
        goal = Goal(target=target, period=period, num_periods=3, total_cost=total,
                    stream=StreamCosts(groups, unit, 128))
        chosen = policy.choose(zero, sq, {"taylor": torch.zeros_like(sq)}, pools, goal)
        assert not (zero & chosen).any()
        zero = zero | chosen
        removed = 1 - groups.kept_cost(~zero, unit, 128) / total
        assert removed <= target * (period + 1) / 3 + 1e-9
    channel = groups.kept_cost(torch.ones_like(zero), unit, 128) / 384 / total  # one channel of the dense model
    assert target - removed <= channel, (removed, target)
    width = groups.kept_hidden_size(~zero)
    assert math.floor(min(0.25, 1 - target) * 384) <= width < 384
