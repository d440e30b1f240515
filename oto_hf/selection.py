"""Which groups HSPG's target mode removes: the selection policy, kept apart from the optimizer.

At the start of each pruning period `HSPG` asks its `SelectionPolicy` for the redundant set: the groups that the
period's penalty will drive to zero. The policy is three parts handed to the optimizer (as Torch-Pruning hands its
pruner an importance and a schedule):

* a **saliency** (`TaylorSaliency`, `FisherSaliency`, `MagnitudeSaliency`, `MixedSaliency`): how important each group
  is, from running averages it updates every step;
* a **layout** (`UniformLayout`, `BalancedLayout`): how the period's budget is shared between layers and kinds of
  groups;
* a **floor** (`LayerFloor`): the fraction of each layer's groups of each kind that must stay.

Everything here works on per-group vectors: a cost per group (FLOPs or parameters), a kind per group (heads,
neurons; a new kind is a new integer) and a layer per group. Groups of one kind in one layer form a *pool*. The
budget is never exceeded: a group that would overshoot is skipped and cheaper ones fill the rest.

A speed target (`TimeBudget`, from a measured `oto_hf.latency.LatencyTable`) is not a cost per group: a block's time
is not proportional to its groups (at small batches emptying a block also saves its fixed per-operator cost). The
`LatencyLayout` spends it directly; the cost layouts are given the cost fraction predicted to meet it
(`SelectionPolicy.choose_for_time`).

Why these defaults (and why "global", the ranking by saliency per unit of cost, was retired): docs/experiments.md.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from .groups import HIDDEN, ZeroInvariantGroups


# ---- what the policy works on ----


@dataclass(frozen=True)
class Pools:
    """Each group's cost (float64), kind and layer on one device, and its (kind, layer) pool as one integer `key`
    (`num_pools` possible values). Built once per choice from the groups and the cost vector the optimizer counts."""

    costs: torch.Tensor
    kinds: torch.Tensor
    layers: torch.Tensor
    sizes: torch.Tensor
    num_layers: int
    key: torch.Tensor
    num_pools: int

    @classmethod
    def of(cls, groups: ZeroInvariantGroups, costs: torch.Tensor, device: torch.device) -> "Pools":
        kinds, layers = groups.kinds.to(device), groups.layers.to(device)
        key = kinds * (groups.num_layers + 1) + layers
        return cls(costs=costs.to(device).double(), kinds=kinds, layers=layers, sizes=groups.sizes.to(device),
                   num_layers=groups.num_layers, key=key, num_pools=int(key.max()) + 1)

    def kept_per_layer(self, removed: torch.Tensor) -> dict[int, torch.Tensor]:
        """{kind: groups of that kind each layer keeps (float64, one per layer)} without those `removed` marks (the
        stream's channels, in no layer, are not counted here)."""
        kept = {}
        for kind in torch.unique(self.kinds[self.layers >= 0]).tolist():
            member = (self.kinds == kind) & ~removed
            kept[kind] = torch.bincount(self.layers[member], minlength=self.num_layers).double()
        return kept


@dataclass(frozen=True)
class TimeBudget:
    """A speed target in the policy's terms: the predicted forward time of a model from how many groups of each kind
    each layer keeps. `block_seconds(kind, kept)`: one layer's block of `kind` (HEAD, NEURON) with `kept` groups (a
    float64 tensor, one count per layer) above an empty block; `fixed_seconds`: the time no group changes (every
    grouped block empty; a kind that is not grouped counts at its size); `dense_seconds`: the model before pruning;
    `target_seconds`: dense / asked speedup. With the stream's channels among the groups, `at_width(width)` gives
    (fixed_seconds, block_seconds) with the stream `width` channels wide (the others are at its full width). Built by
    `HSPG` from an `oto_hf.latency.LatencyTable`."""

    block_seconds: Callable[[int, torch.Tensor], torch.Tensor]
    fixed_seconds: float
    dense_seconds: float
    target_seconds: float
    at_width: Callable[[int], tuple[float, Callable[[int, torch.Tensor], torch.Tensor]]] | None = None

    def predict(self, removed: torch.Tensor, pools: "Pools") -> float:
        """Predicted seconds of the model without the groups `removed` marks."""
        fixed, block_seconds = self.fixed_seconds, self.block_seconds
        if self.at_width is not None:
            fixed, block_seconds = self.at_width(int(((pools.kinds == HIDDEN) & ~removed).sum()))
        return fixed + float(sum(
            block_seconds(kind, kept).sum() for kind, kept in pools.kept_per_layer(removed).items()))

    @property
    def largest_speedup(self) -> float:
        """The predicted speedup with every grouped block empty (and the stream at its narrowest measured width):
        the most a speed target can ask for."""
        return self.dense_seconds / (self.at_width(0)[0] if self.at_width is not None else self.fixed_seconds)

    def seconds_at(self, fraction_done: float) -> float:
        """The time a period that ends at `fraction_done` of the window aims for: the time saved grows in equal
        steps, as a cost target's does."""
        return self.dense_seconds - fraction_done * (self.dense_seconds - self.target_seconds)


@dataclass(frozen=True)
class StreamCosts:
    """A cost target's exact costs when the residual stream's channels are groups too. A head's or neuron's cost then
    depends on how wide the stream is (its projections narrow with it), so costs no longer add up; with the width
    fixed they do again (`ZeroInvariantGroups.costs_at_width`), which is how the policy spends the budget. Built by
    `HSPG` from its groups."""

    groups: ZeroInvariantGroups
    unit: str
    seq_len: int | None

    def costs_at_width(self, width: int) -> torch.Tensor:
        return self.groups.costs_at_width(self.unit, width, self.seq_len)

    def kept_cost(self, keep: torch.Tensor) -> float:
        return self.groups.kept_cost(keep, self.unit, self.seq_len)


@dataclass(frozen=True)
class Goal:
    """What the zero groups must hold: `target` (a fraction of `total_cost`) reached in `num_periods` equal steps;
    `period` is the one being chosen for. With a speed target, `time` holds it and `target` is not used (the cost
    layouts are given the cost fraction that meets the period's time, `SelectionPolicy.choose`). With hidden
    channels among the groups, `stream` counts the costs exactly (`SelectionPolicy.choose_with_stream`)."""

    target: float
    period: int
    num_periods: int
    total_cost: float
    time: TimeBudget | None = None
    stream: StreamCosts | None = None

    @property
    def cost_now(self) -> float:
        """The cost the zero and redundant groups together hold by the end of this period."""
        return self.target * (self.period + 1) / self.num_periods * self.total_cost

    @property
    def final_cost(self) -> float:
        """The cost they hold at the end of the last period."""
        return self.target * self.total_cost

    @property
    def fraction_done(self) -> float:
        """The share of the final goal this period ends at."""
        return (self.period + 1) / self.num_periods

    @property
    def last_period(self) -> bool:
        return self.period == self.num_periods - 1


# ---- saliency: how important each group is ----


class Saliency:
    """Scores groups for removal (lower = removed first). Every saliency keeps the running average of a per-step
    score of x_gᵀ∇_g f (`averages["taylor"]`, started at zero so that every step weighs (1 − decay)·decay^age; a
    common scale does not change a ranking, so no bias correction is needed). `decay` is that average's decay per
    step (0.99 by default: about the last hundred steps count).

    Subclasses say how a step is scored (`step_score`) and how the averages become an importance (`importance`).
    """

    name = ""
    needs_gradient_norms = False  # whether `observe` needs the per-group ‖∇_g f‖² (only "mixed")

    def __init__(self, decay: float = 0.99):
        self.decay = decay

    def step_score(self, dot: torch.Tensor) -> torch.Tensor:
        """This step's score from the per-group x_gᵀ∇_g f."""
        return dot.abs()

    def observe(self, averages: dict, dot: torch.Tensor, sq: torch.Tensor, grad_sq: torch.Tensor | None) -> None:
        """Update the running averages in place from this step's per-group x_gᵀ∇_g f (`dot`), ‖x_g‖² (`sq`) and,
        where `needs_gradient_norms`, ‖∇_g f‖² (`grad_sq`)."""
        averages["taylor"].mul_(self.decay).add_(self.step_score(dot), alpha=1 - self.decay)

    def importance(self, averages: dict, sq: torch.Tensor, alive: torch.Tensor, pools: Pools) -> torch.Tensor:
        """Each group's importance (float64) from the averages and its current ‖x_g‖²; `alive`: the non-zero groups."""
        return averages["taylor"].double()


class TaylorSaliency(Saliency):
    """|x_gᵀ∇_g f|, averaged over steps: the first-order estimate of the loss change if the group were removed."""

    name = "taylor"


class FisherSaliency(Saliency):
    """(x_gᵀ∇_g f)², averaged over steps: the empirical-Fisher (second-order) estimate."""

    name = "fisher"

    def step_score(self, dot: torch.Tensor) -> torch.Tensor:
        return dot.square()


class MagnitudeSaliency(Saliency):
    """‖x_g‖² / |g|: the group's mean squared weight, now (the Taylor average is kept but not used)."""

    name = "magnitude"

    def importance(self, averages, sq, alive, pools):
        return sq.double() / pools.sizes


class MixedSaliency(Saliency):
    """HESSO's (OTO v3) saliency: an equal-weight sum of five criteria, each scaled to unit L2 norm over the live
    groups of its pool, so that every criterion has the same say in every ranking whatever its units: magnitude
    ‖x_g‖, average magnitude ‖x_g‖/|g|, direction 1 − cos(x_g, ∇_g), first-order Taylor |x_gᵀ∇_g| and second-order
    Taylor ½(x_gᵀ∇_g)² (the last three from running averages). Within one pool every group has the same size, so the
    two magnitudes rank alike (magnitude counts twice); HESSO scales over all groups at once and adds cos + 1, which
    ranks a group the loss asks to shrink as more important; here that is the less important side, as the
    first-order Taylor estimate of removing it says."""

    name = "mixed"
    needs_gradient_norms = True

    def observe(self, averages, dot, sq, grad_sq):
        super().observe(averages, dot, sq, grad_sq)
        # 1 − cos(x_g, ∇_g) ∈ [0, 2]: small when a descent step would shrink the group (the loss itself asks for
        # less of it), large when it would grow it. A zero group or gradient counts as orthogonal (1).
        denominator = sq.sqrt() * grad_sq.sqrt()
        cosine = torch.where(denominator > 0, dot / denominator.clamp_min(1e-30), torch.zeros_like(dot))
        averages["direction"].mul_(self.decay).add_(1 - cosine.clamp(-1, 1), alpha=1 - self.decay)

    def importance(self, averages, sq, alive, pools):
        norm = sq.double().sqrt()
        taylor = averages["taylor"].double()
        criteria = (norm, norm / pools.sizes, averages["direction"].double(), taylor, 0.5 * taylor.square())
        importance = torch.zeros_like(norm)
        for values in criteria:
            values = torch.where(alive, values, torch.zeros_like(values))
            scale = torch.zeros(pools.num_pools, dtype=values.dtype, device=values.device).index_add_(
                0, pools.key, values.square()).sqrt()
            importance += values / scale[pools.key].clamp_min(torch.finfo(values.dtype).tiny)
        return importance / len(criteria)


SALIENCIES = {cls.name: cls for cls in (TaylorSaliency, FisherSaliency, MagnitudeSaliency, MixedSaliency)}


def layer_relative(importance: torch.Tensor, alive: torch.Tensor, pools: Pools) -> torch.Tensor:
    """Each group's importance divided by the mean importance of the live groups of its pool, so that layers whose
    scores run larger or smaller as a whole are ranked fairly against each other (within one pool it ranks like the
    raw importance)."""
    key = pools.key
    total = torch.zeros(pools.num_pools, dtype=importance.dtype, device=importance.device).index_add_(
        0, key[alive], importance[alive])
    count = torch.zeros(pools.num_pools, dtype=importance.dtype, device=importance.device).index_add_(
        0, key[alive], torch.ones_like(importance[alive]))
    mean = total / count.clamp_min(1)
    return importance / mean[key].clamp_min(torch.finfo(importance.dtype).tiny)


# ---- the floor: what every layer keeps ----


@dataclass(frozen=True)
class LayerFloor:
    """Every layer keeps at least ⌊f · n⌋ of its n groups of each kind, f = min(`fraction`, 1 − target); 0 sets no
    floor. It keeps a ranking across layers from emptying a layer (a layer left with one or two heads costs quality
    far beyond its share). Default 0.25; raise it if a learned layout starves some layers. The target comes first: at
    f = 1 − target, where rounding can leave too little above the floors, the last few groups come from below."""

    fraction: float = 0.25

    def allowed(self, score: torch.Tensor, zero: torch.Tensor, pools: Pools, target: float) -> torch.Tensor:
        """The zero groups and, in each pool, the least salient live groups that can go before the pool is down to
        its floor (every group without a floor). Zero groups stay allowed, so that what a pool already holds is
        counted."""
        if self.fraction <= 0:
            return torch.ones_like(zero)
        key, slots = pools.key, pools.num_pools
        size = torch.bincount(key, minlength=slots)
        keep = torch.floor(min(self.fraction, 1 - target) * size.double() + 1e-9).long()
        removable = (size - keep - torch.bincount(key[zero], minlength=slots)).clamp_min(0)
        # Rank the live groups within their pool, least salient first: sort by score, then (stably) by pool, and
        # subtract each pool's first position.
        live = torch.nonzero(~zero).flatten()
        order = live[torch.argsort(score[live])]
        order = order[torch.argsort(key[order], stable=True)]
        pool = key[order]
        rank = torch.arange(len(order), device=zero.device) - torch.searchsorted(pool, pool)
        allowed = zero.clone()
        allowed[order[rank < removable[pool]]] = True
        return allowed


# ---- layouts: how the budget is shared ----


class Layout:
    """Shares a period's budget between layers and kinds of groups: `mark` sets the redundant groups of each pool it
    fills, each pool stopping short of its share by less than one of its groups. `tops_up(goal)` says whether the
    policy then fills what is left with the cheapest groups, least salient first."""

    name = ""

    def mark(self, redundant: torch.Tensor, allowed: torch.Tensor, score: torch.Tensor, zero: torch.Tensor,
             pools: Pools, goal: Goal) -> None:
        raise NotImplementedError

    def tops_up(self, goal: Goal) -> bool:
        return True


class UniformLayout(Layout):
    """Every layer gives up the target's fraction of its cost (the default). Its layout is fixed by the final target
    alone (the one a single period would choose): the coarse groups (heads) the nearest whole number of their share
    of the layer's goal (never more than the goal), the fine ones (neurons) the rest. Each period takes the period's
    fraction of that, the coarse groups rounded down to whole groups and the fine ones the rest of the period's goal,
    but never beyond their final share, so that whatever the number of periods, the last one ends at that layout.
    Only which groups go is learned (least salient first within the layer)."""

    name = "uniform"

    def mark(self, redundant, allowed, score, zero, pools, goal):
        costs, kinds = pools.costs, pools.kinds
        removable = float(costs.sum())
        for layer in range(pools.num_layers):
            in_layer = pools.layers == layer
            layer_cost = float(costs[in_layer].sum())
            final_layer_goal = goal.final_cost * layer_cost / removable
            layer_kinds = sorted(torch.unique(kinds[in_layer]).tolist(),
                                 key=lambda k: -float(costs[in_layer & (kinds == k)].max()))
            final_coarse = 0.0
            for i, kind in enumerate(layer_kinds):
                member = in_layer & (kinds == kind)
                if i < len(layer_kinds) - 1:
                    unit = float(costs[member].max())
                    final_share = min(round(final_layer_goal * float(costs[member].sum()) / layer_cost / unit) * unit,
                                      final_layer_goal - final_coarse)
                    final_coarse += final_share
                    share = math.floor(goal.fraction_done * final_share / unit + 1e-9) * unit
                else:
                    taken = float(costs[in_layer & ~member & (zero | redundant)].sum())
                    share = min(goal.fraction_done * final_layer_goal - taken, final_layer_goal - final_coarse)
                mark_least_salient(redundant, member & allowed, share, score, costs, zero)

    def tops_up(self, goal):
        # Only in the last period: an earlier fill would give neurons a share that their layer's heads take back
        # later, and zero groups stay.
        return goal.last_period


class BalancedLayout(Layout):
    """Each kind (heads, FFN neurons) gives up the target's fraction of its cost, its groups ranked across layers by
    their layer-relative score, so layers can end up at different sizes."""

    name = "balanced"

    def mark(self, redundant, allowed, score, zero, pools, goal):
        costs, kinds = pools.costs, pools.kinds
        removable = float(costs.sum())
        goal_cost = goal.cost_now
        for kind in torch.unique(kinds).tolist():
            member = kinds == kind
            mark_least_salient(redundant, member & allowed, goal_cost * float(costs[member].sum()) / removable, score,
                               costs, zero)


class LatencyLayout(Layout):
    """With a speed target (the default there): the period's time is bought where it costs the least saliency. Every
    attention block and every FFN block (a pool) can give up its least salient groups; giving up the j least salient
    of a pool loses the share of the pool's live saliency they hold (scores relative to the pool's mean, so every
    block weighs the same whatever its kind and units) and saves the measured time its block drops by
    (`TimeBudget.block_seconds`: not proportional to the groups, since at small batches a block's fixed per-operator
    cost is only saved by emptying it). Moves are taken greedily, the least saliency lost per second saved first,
    until the period's predicted time is met; a move that meets it at less loss than the best-ratio move ends the
    choice. So whole blocks are emptied where that buys the most time. The floor keeps its purpose (no block is left
    starved): a block keeps at least ⌊floor · n⌋ of its n groups, or is emptied altogether."""

    name = "latency"

    def mark(self, redundant, allowed, score, zero, pools, goal):
        raise ValueError("the 'latency' allocation spends a speed target (--oto_speedup); with a FLOPs or parameter "
                         "target use 'uniform' or 'balanced'")

    def tops_up(self, goal):
        return False

    def plan(self, score: torch.Tensor, zero: torch.Tensor, pools: Pools, goal: Goal,
             floor: "LayerFloor") -> torch.Tensor:
        """The redundant groups that bring the predicted time down to the period's (`goal.time`), never leaving a
        block between empty and its floor."""
        budget = goal.time
        need = budget.predict(zero, pools) - budget.seconds_at(goal.fraction_done)
        moves = [_PoolMoves(key, pools, score, zero, floor.fraction, budget)
                 for key in torch.unique(pools.key).tolist()]
        moves = [m for m in moves if m.live]
        chosen: list[torch.Tensor] = []
        while need > 1e-12:
            options = [(m.best, m) for m in moves if m.best is not None]
            if not options:
                break
            (_, loss, gain, j), pool = min(options, key=lambda o: o[0][0])
            if gain < need:  # a move that meets the need at less loss ends the choice
                finishers = [(f, m) for m in moves if (f := m.finisher(need)) is not None]
                if finishers:
                    finish, finish_pool = min(finishers, key=lambda o: o[0][1])
                    if finish[1] <= loss:
                        (_, loss, gain, j), pool = finish, finish_pool
            chosen.append(pool.take(j))
            need -= gain
        redundant = torch.zeros_like(zero)
        if chosen:
            redundant[torch.cat(chosen)] = True
        return redundant


class _PoolMoves:
    """The moves one pool (one kind of group in one layer) offers `LatencyLayout`: give up its j least salient live
    groups, for every j that leaves it at or above the floor, or empty. Each move's loss is the share of the pool's
    live saliency those groups hold, its gain the seconds its block saves (the time curve is non-decreasing, so both
    grow with j). `best` (loss per second, loss, gain, j) is kept up to date after every `take`."""

    def __init__(self, key: int, pools: Pools, score: torch.Tensor, zero: torch.Tensor, floor: float,
                 budget: TimeBudget):
        member = pools.key == key
        kind = int(pools.kinds[member][0])
        size = int(member.sum())
        live = torch.nonzero(member & ~zero).flatten()
        self.order = live[torch.argsort(score[live], stable=True)]
        self.live = len(self.order)
        self.keep_at_least = math.floor(floor * size + 1e-9)
        values = score[self.order].double().clamp_min(0).cpu().numpy()
        total = float(values.sum())
        # cumulative[j]: the share of the live saliency held by the j least salient (cumulative[0] = 0).
        self.cumulative = np.concatenate([[0.0], np.cumsum(values) / total if total > 0 else
                                          np.arange(1, self.live + 1) / max(self.live, 1)])
        # seconds[n]: the block's time with n groups kept, for n = 0..live.
        self.seconds = budget.block_seconds(kind, torch.arange(self.live + 1, dtype=torch.float64)).cpu().numpy()
        self.taken = 0
        self.best = self._best()

    def _moves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(j, loss, gain) of the valid moves from the pool's state now, or None."""
        left = self.live - self.taken
        if left <= 0:
            return None
        j = np.arange(1, left + 1)
        kept = left - j
        loss = self.cumulative[self.taken + j] - self.cumulative[self.taken]
        gain = self.seconds[left] - self.seconds[kept]
        valid = ((kept == 0) | (kept >= self.keep_at_least)) & (gain > 0)
        if not valid.any():
            return None
        return j[valid], loss[valid], gain[valid]

    def _best(self):
        moves = self._moves()
        if moves is None:
            return None
        j, loss, gain = moves
        i = int(np.argmin(loss / gain))
        return float(loss[i] / gain[i]), float(loss[i]), float(gain[i]), int(j[i])

    def finisher(self, need: float):
        """The least lossy move that saves at least `need` seconds (the one with the fewest groups), or None."""
        moves = self._moves()
        if moves is None:
            return None
        j, loss, gain = moves
        meets = np.nonzero(gain >= need)[0]
        if len(meets) == 0:
            return None
        i = int(meets[0])
        return float(loss[i] / gain[i]), float(loss[i]), float(gain[i]), int(j[i])

    def take(self, j: int) -> torch.Tensor:
        """Give up the next `j` least salient groups; returns their indices."""
        chosen = self.order[self.taken:self.taken + j]
        self.taken += j
        self.best = self._best()
        return chosen


LAYOUTS = {cls.name: cls for cls in (UniformLayout, BalancedLayout, LatencyLayout)}


# ---- the policy ----


# The largest cost fraction a speed target's bisection tries with the stream's channels among the groups (all of it:
# `choose_with_stream` keeps one channel whatever it is asked).
MOST_REMOVED_WITH_STREAM = 1.0


@dataclass
class SelectionPolicy:
    """The saliency, layout and floor that together choose a period's redundant groups."""

    saliency: Saliency
    layout: Layout
    floor: LayerFloor

    def choose(self, zero: torch.Tensor, sq: torch.Tensor, averages: dict, pools: Pools, goal: Goal) -> torch.Tensor:
        """The redundant groups for `goal`'s period: the least salient live groups, until the zero groups and the
        redundant ones together hold the period's cost (`goal.cost_now`), never more."""
        importance = self.saliency.importance(averages, sq, ~zero, pools)
        score = layer_relative(importance, ~zero, pools)
        if goal.time is not None:
            return self.choose_for_time(score, zero, pools, goal)
        if goal.stream is not None:
            return self.choose_with_stream(score, zero, pools, goal)
        allowed = self.floor.allowed(score, zero, pools, goal.target)
        redundant = torch.zeros_like(zero)
        self.layout.mark(redundant, allowed, score, zero, pools, goal)
        if self.layout.tops_up(goal):
            top_up(redundant, allowed, score, zero, pools.costs, goal.cost_now)
        return redundant

    def choose_for_time(self, score: torch.Tensor, zero: torch.Tensor, pools: Pools, goal: Goal) -> torch.Tensor:
        """The redundant groups of a speed target's period. The 'latency' layout spends the time directly
        (`LatencyLayout.plan`). A cost layout ('uniform', 'balanced') keeps its meaning in cost: it is given the
        smallest cost fraction whose final layout (the last period's, on today's scores) the time budget predicts
        to meet the asked time, and marks this period's share of that fraction; it never empties a block before the
        floor yields (as with a cost target, at fractions near everything). With the stream's channels among the
        groups the fraction is of the exact cost, and each layout is `choose_with_stream`'s (the stream gives up the
        blocks' share of its channels); the 'latency' layout does not plan a stream."""
        if isinstance(self.layout, LatencyLayout):
            if goal.stream is not None:
                raise ValueError("the 'latency' allocation does not plan the hidden width: with prune_hidden and a "
                                 "speedup use the 'uniform' or 'balanced' allocation")
            return self.layout.plan(score, zero, pools, goal, self.floor)
        budget = goal.time

        def marks(target: float, period_goal: Goal) -> torch.Tensor:
            period_goal = replace(period_goal, target=target, time=None)
            if period_goal.stream is not None:
                return self.choose_with_stream(score, zero, pools, period_goal)
            allowed = self.floor.allowed(score, zero, pools, target)
            redundant = torch.zeros_like(zero)
            self.layout.mark(redundant, allowed, score, zero, pools, period_goal)
            if self.layout.tops_up(period_goal):
                top_up(redundant, allowed, score, zero, pools.costs, period_goal.cost_now)
            return redundant

        last = replace(goal, period=goal.num_periods - 1)
        if goal.stream is None:
            low = float(pools.costs[zero].sum()) / goal.total_cost
            high = float(pools.costs.sum()) / goal.total_cost
        else:  # exact costs (not additive with the stream's channels)
            low, high = 1 - goal.stream.kept_cost(~zero) / goal.total_cost, MOST_REMOVED_WITH_STREAM
        if budget.predict(zero | marks(high, last), pools) <= budget.target_seconds:
            for _ in range(40 if goal.stream is None else 25):  # to well below one group's share of the cost
                middle = (low + high) / 2
                if budget.predict(zero | marks(middle, last), pools) <= budget.target_seconds:
                    high = middle
                else:
                    low = middle
        return marks(high, goal)

    def choose_with_stream(self, score: torch.Tensor, zero: torch.Tensor, pools: Pools, goal: Goal) -> torch.Tensor:
        """The redundant groups of a cost target's period when the stream's channels are groups too, chosen for the
        share of the target this period ends at (costs are exact only for a known width, so each period plans its
        own end). The stream gives up the same share of its channels as the blocks (heads and neurons, their costs
        at the stream's new width) then give up of their cost: the largest number of channels n with n / width ≤
        the blocks' share, never below the floor (⌊floor · width⌋ channels stay); its least salient channels go.
        The layout shares the blocks' part as without the stream; chosen groups beyond the period's share (pools
        that earlier periods took further) are given back, most salient first, the next channels fill what whole
        groups leave and the cheapest groups what the last channel would overshoot, so each period meets its share
        to within one of them, never beyond it."""
        stream = goal.stream
        hidden = pools.kinds == HIDDEN
        channels = torch.nonzero(hidden).flatten()
        width = len(channels)
        target = goal.target * goal.fraction_done
        # Zero channels first, then the live ones, least salient first.
        order = channels[torch.argsort(score[channels], stable=True)]
        order = torch.cat([order[zero[order]], order[~zero[order]]])
        already = int(zero[channels].sum())
        most = width - max(1, math.floor(min(self.floor.fraction, 1 - goal.target) * width + 1e-9))  # ≥ 1 stays

        def blocks_share(cut: int) -> tuple[float, torch.Tensor]:
            """The share of the blocks' cost the target asks of them with `cut` channels gone, and their costs."""
            keep = torch.ones_like(zero)
            keep[order[:cut]] = False
            costs = stream.costs_at_width(width - cut).to(zero.device)
            block_total = float(costs[~hidden].sum())
            must_go = stream.kept_cost(keep) - (1 - target) * goal.total_cost
            return min(max(must_go / block_total, 0.0), 1.0) if block_total > 0 else 0.0, costs

        low, high = already, max(already, most)  # the largest cut with cut / width ≤ blocks_share(cut)
        while low < high:
            middle = (low + high + 1) // 2
            if middle / width <= blocks_share(middle)[0]:
                low = middle
            else:
                high = middle - 1
        share, costs = blocks_share(low)
        costs[hidden] = 0.0
        redundant = torch.zeros_like(zero)
        redundant[order[already:low]] = True

        blocks = replace(pools, costs=costs)
        block_goal = Goal(target=share, period=0, num_periods=1, total_cost=float(costs.sum()))
        allowed = self.floor.allowed(score, zero, blocks, share) & ~hidden
        block_redundant = torch.zeros_like(zero)
        self.layout.mark(block_redundant, allowed, score, zero, blocks, block_goal)
        if self.layout.tops_up(block_goal):
            top_up(block_redundant, allowed, score, zero & ~hidden, costs, block_goal.cost_now)
        redundant |= block_redundant & ~hidden
        floor_cost = (1 - target) * goal.total_cost
        # Groups zeroed in earlier periods, chosen at a wider stream, can leave a pool beyond its share now, which
        # the layout does not take back from the others: give back the most salient chosen groups until the exact
        # cost is at or above the period's again.
        chosen = torch.nonzero(redundant).flatten()
        for group in chosen[torch.argsort(score[chosen], descending=True)].tolist():
            if stream.kept_cost(~(zero | redundant)) >= floor_cost - 1e-6:
                break
            redundant[group] = False
        # A whole head can be too coarse to land on the share: the next least salient channels fill what is left,
        # each only while the exact cost stays at or above the period's.
        for channel in order[already:most].tolist():
            if redundant[channel]:
                continue
            redundant[channel] = True
            if stream.kept_cost(~(zero | redundant)) < floor_cost - 1e-6:
                redundant[channel] = False
                break
        # And the cheapest groups (neurons) what the last channel would overshoot, their costs exact at this width.
        gone = zero | redundant
        costs = stream.costs_at_width(width - int(gone[channels].sum())).to(zero.device)
        candidates = torch.nonzero(allowed & ~gone & ~hidden).flatten()
        candidates = candidates[torch.argsort(score[candidates])]
        candidates = candidates[torch.argsort(costs[candidates], stable=True)]
        fill = candidates[fill_budget(costs[candidates], stream.kept_cost(~gone) - floor_cost)]
        redundant[fill] = True
        for group in fill.flip(0).tolist():  # an emptied pre-LN block also drops its norm: never past the share
            if stream.kept_cost(~(zero | redundant)) >= floor_cost - 1e-6:
                break
            redundant[group] = False
        return redundant


def top_up(redundant: torch.Tensor, allowed: torch.Tensor, score: torch.Tensor, zero: torch.Tensor,
           costs: torch.Tensor, goal_cost: float) -> None:
    """Fill what the pools left of `goal_cost` with the cheapest groups (neurons), least salient first, so the
    target is met to within one of them. The floor yields to the target: only when it is at 1 − target can rounding
    leave the allowed groups short, and then the second pass takes the last few from below it. Without a floor every
    group is allowed and the second pass finds nothing."""
    for pool in (allowed, ~allowed):
        need = goal_cost - float(costs[zero | redundant].sum())
        candidates = torch.nonzero(pool & ~zero & ~redundant).flatten()
        order = candidates[torch.argsort(score[candidates])]
        order = order[torch.argsort(costs[order], stable=True)]
        redundant[order[fill_budget(costs[order], need)]] = True


def mark_least_salient(redundant: torch.Tensor, member: torch.Tensor, share: float, score: torch.Tensor,
                       costs: torch.Tensor, zero: torch.Tensor) -> None:
    """Mark the least salient live groups of `member` redundant until the pool's zero and newly marked groups hold
    `share` of the cost (never more)."""
    need = share - float(costs[zero & member].sum())
    candidates = torch.nonzero(member & ~zero & ~redundant).flatten()
    order = candidates[torch.argsort(score[candidates])]
    redundant[order[fill_budget(costs[order], need)]] = True


def fill_budget(costs: torch.Tensor, budget: float) -> torch.Tensor:
    """Indices of a prefix-greedy selection of `costs` (in priority order) whose sum stays ≤ `budget`: take items in
    order, skip one that would overshoot, and keep filling with later (cheaper) ones."""
    if budget <= 0 or len(costs) == 0:
        return torch.zeros(0, dtype=torch.long, device=costs.device)
    cumulative = torch.cumsum(costs, 0)
    take = cumulative <= budget + 1e-6
    chosen = torch.nonzero(take).flatten()
    left = budget - float(costs[chosen].sum())
    rest = torch.nonzero(~take).flatten()
    extra = []
    # Only the few items after the first overshoot need a look: costs come in few sizes (head, neuron).
    for i in rest.tolist():
        c = float(costs[i])
        if c <= left + 1e-6:
            extra.append(i)
            left -= c
        if left < float(costs.min()):
            break
    if extra:
        chosen = torch.cat([chosen, torch.tensor(extra, dtype=torch.long, device=costs.device)])
    return chosen


__all__ = [
    "BalancedLayout", "FisherSaliency", "Goal", "StreamCosts", "LAYOUTS", "LatencyLayout", "LayerFloor", "Layout",
    "MagnitudeSaliency", "MixedSaliency", "Pools", "SALIENCIES", "Saliency", "SelectionPolicy", "TaylorSaliency",
    "TimeBudget", "UniformLayout",
    "fill_budget", "layer_relative", "mark_least_salient", "top_up",
]
