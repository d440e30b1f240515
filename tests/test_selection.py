"""The selection policy (oto_hf.selection) on its own: the layouts, the floor and the saliencies, given made-up
saliency averages, without an optimizer."""

import pytest
import torch
from transformers import BertForQuestionAnswering

from conftest import tiny_bert_config
from oto_hf import zero_invariant_groups
from oto_hf.groups import HEAD, NEURON
from oto_hf.selection import Goal, MixedSaliency, Pools, fill_budget
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
