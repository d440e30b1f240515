"""HSPG: Half-Space Stochastic Projected Gradient (Only-Train-Once, NeurIPS 2021), with an AdamW direction and a
FLOPs/parameter target.

The problem is min_x f(x) + λ Σ_g ‖x_g‖₂ over the zero-invariant groups g.

* Stage 1 (step < `half_space_start`): a subgradient step x ← x − α(d(x) + λ x_g/‖x_g‖) on every non-zero group,
  where d is the direction of the base optimizer (SGD with momentum, or AdamW's adaptive moments).
* Stage 2: the same trial point x̂, then every candidate group with x̂_gᵀx_g < ε‖x_g‖² is projected to exactly zero.
  Zero groups stay zero for good: their parameters and optimizer moments are held at zero.

Parameters outside any group take the plain base step (with weight decay where the direction has it).

The group penalty is decoupled from the adaptive moments, like AdamW's weight decay: the step is
x̂ = x − α·Adam(∇f) − α·λ·x_g/‖x_g‖, so λ means "norm removed per unit of learning rate" in both directions.

**Target mode** (`target` set: the fraction of encoder FLOPs or parameters to remove). λ alone cannot promise a
size, so, in the spirit of DHSPG (OTO v2), stage 2 becomes a pruning window of `prune_steps` steps split into
`num_periods` periods. At the start of each period the least salient non-zero groups are marked redundant until the
period's share of the target is covered (never more). How the target is shared (`allocation`):

* "uniform" (the default): every layer gives up the target's fraction of its cost, its heads the nearest whole number
  of their share and its neurons the rest. The layout is fixed; only which heads and neurons go is learned (least
  salient first within the layer).
* "balanced": heads and FFN neurons each give up the target's fraction of their cost, and the groups of a kind are
  ranked across layers by their saliency relative to their layer's mean, so layers can end up at different sizes.
* "global": all groups ranked by saliency per unit of cost. (Saliency scores of a head and of a neuron are not on a
  common scale, so this one tends to prune one kind far more than the other.)

`layer_floor` keeps every layer at or above a fraction of its heads and of its neurons, whatever "balanced" or
"global" rank ("uniform" keeps every layer above it anyway). Redundant groups take the subgradient step with an
adaptive λ_g large enough to bring them to zero by the end of the period (linearly in norm), and the half-space
projection; whatever is left of them at the period's end is projected. Other groups take the plain base step.
After the window the zero set is frozen, so the target is reached to within one group's cost and held. All group
work is done with whole-tensor operations, never one group at a time.

Why these defaults: docs/experiments.md.
"""

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from .groups import HEAD, NEURON, ZeroInvariantGroups


DIRECTIONS = ("adamw", "sgd")
TARGET_UNITS = ("flops", "params")
SALIENCIES = ("taylor", "fisher", "magnitude", "mixed")
ALLOCATIONS = ("balanced", "global", "uniform")


class HSPG(Optimizer):
    """Half-Space Stochastic Projected Gradient over the zero-invariant `groups` of a model.

    Args:
        params: the model's parameters or parameter groups (all of the model's trainable parameters, as for any
            optimizer; grouped and ungrouped alike).
        groups: the `ZeroInvariantGroups` of that model.
        lr: step size α.
        direction: "adamw" (adaptive moments, decoupled weight decay) or "sgd" (momentum, L2 weight decay).
        lmbda: λ ≥ 0, the group-lasso strength.
        epsilon: ε ∈ [0, 1), how aggressively the half-space step projects (larger projects more).
        half_space_start: N_P, the step at which stage 2 (projection) starts.
        target: fraction in [0, 1) of encoder FLOPs (or parameters, see `target_unit`) to remove; None for the
            paper's λ-only mode.
        target_unit: "flops" (per example at `seq_len` tokens) or "params".
        seq_len: the sequence length at which FLOPs are counted (default: the groups' own, 384 for text models).
        prune_steps: length of the pruning window that starts at `half_space_start` (required with a target).
        num_periods: the window is split into this many periods; the target grows in equal steps per period.
        saliency: how redundant groups are scored: "taylor" (|x_gᵀ∇_g f|, averaged over steps), "fisher"
            ((x_gᵀ∇_g f)², averaged), "magnitude" (‖x_g‖²/|g|) or "mixed" (HESSO's equal-weight mix of magnitude,
            average magnitude, direction, first- and second-order Taylor; see `_mixed_importance`). Default "taylor".
        allocation: how the target is shared between kinds of groups: "uniform" (every layer removes the same
            fraction of its cost: the nearest whole number of heads, neurons for the rest; least salient first within
            the layer), "balanced" (heads and neurons each remove that fraction of their cost; groups ranked across
            layers by saliency / its layer's mean) or "global" (all groups ranked by saliency per unit of cost).
        layer_floor: with a target, every layer keeps at least ⌊f · n⌋ of its n heads and of its n FFN neurons,
            f = min(layer_floor, 1 − target); 0 sets no floor. It keeps the ranking across layers of "balanced" and
            "global" from emptying a layer (a layer left with one or two heads costs quality far beyond its share);
            raise it if a learned layout starves some layers. Default 0.25. The target comes first:
            at f = 1 − target, where rounding can leave too little above the floors, the last few neurons come from
            below them.
        taylor_decay: decay of the running average of the "taylor" / "fisher" scores (one update per step).
        saliency_zero_init: start that average at zero (the default), so that every step's score weighs
            (1 − decay)·decay^age. False starts it at the first step's score, which then keeps the weight decay^k at
            step k (over half the average for the first ~70 steps at decay 0.99): one batch scored through a task
            head that is still random would dominate the first pruning choice. (A common scale does not change a
            ranking, so no bias correction is needed.)
        betas, eps: AdamW moments. momentum: SGD momentum. weight_decay: as in AdamW / SGD.
    """

    def __init__(
        self,
        params: Iterable,
        groups: ZeroInvariantGroups,
        lr: float = 1e-3,
        *,
        direction: str = "adamw",
        lmbda: float = 1e-3,
        epsilon: float = 0.0,
        half_space_start: int = 0,
        target: float | None = None,
        target_unit: str = "flops",
        seq_len: int | None = None,
        prune_steps: int | None = None,
        num_periods: int = 1,
        saliency: str = "taylor",
        allocation: str = "uniform",
        layer_floor: float = 0.25,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        taylor_decay: float = 0.99,
        saliency_zero_init: bool = True,
    ):
        _check_arguments(lr, direction, lmbda, epsilon, half_space_start, target, target_unit, prune_steps,
                         num_periods, saliency, allocation, layer_floor, betas, momentum, weight_decay, taylor_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, defaults)

        self.groups = groups
        self.direction = direction
        self.lmbda = float(lmbda)
        self.epsilon = float(epsilon)
        self.half_space_start = int(half_space_start)
        self.target = target
        self.target_unit = target_unit
        self.seq_len = seq_len or groups.default_seq_len
        self.prune_steps = prune_steps
        self.num_periods = int(num_periods)
        self.saliency = saliency
        self.allocation = allocation
        self.layer_floor = float(layer_floor)
        self.taylor_decay = taylor_decay
        self.saliency_zero_init = bool(saliency_zero_init)

        optimized = {p for group in self.param_groups for p in group["params"]}
        missing = [t.name for t in groups.tensors if t.param not in optimized]
        if missing:
            raise ValueError(
                f"HSPG must optimize every grouped parameter, but {len(missing)} are not among `params` "
                f"(e.g. {missing[:3]}). Pass all of the model's parameters (model.parameters())."
            )
        # Each grouped parameter tensor belongs to exactly one set of groups (heads or neurons of one layer).
        self._grouped = {t.param: t for t in groups.tensors}

        # A custom (non-BERT) partition has no FLOPs: without a target, count it in parameters for reporting.
        cost_unit = target_unit if (groups.is_transformer or target is not None) else "params"
        self.costs = groups.costs(cost_unit, seq_len)
        self.total_cost = groups.total_cost(cost_unit, seq_len)
        if target is not None:
            removable = float(self.costs.sum()) / self.total_cost
            if target > removable + 1e-9:
                raise ValueError(
                    f"target={target} asks to remove {target:.0%} of encoder {target_unit}, but the grouped heads and "
                    f"neurons hold only {removable:.1%} of them (the rest is never pruned). Lower the target or "
                    "prune both heads and FFN neurons."
                )

        device = groups.device
        num = groups.num_groups
        self.hspg_state = {
            "step": 0,
            "zero": groups.is_zero().to(device),
            "redundant": torch.zeros(num, dtype=torch.bool, device=device),
            "taylor": torch.zeros(num, dtype=torch.float32, device=device),
            # Running average of 1 − cos(x_g, ∇_g), kept only for saliency="mixed".
            "direction": torch.zeros(num, dtype=torch.float32, device=device),
            "period": -1,
            "last_lambda": 0.0,
        }

    # ---- schedule ----

    @property
    def step_count(self) -> int:
        return self.hspg_state["step"]

    def in_stage2(self, step: int | None = None) -> bool:
        return (self.step_count if step is None else step) >= self.half_space_start

    def _period_bounds(self, step: int) -> tuple[int, int, int] | None:
        """(period index, first step, last step + 1) of the pruning period holding `step`, or None outside."""
        if self.target is None or step < self.half_space_start or step >= self.half_space_start + self.prune_steps:
            return None
        length = self.prune_steps // self.num_periods
        period = min((step - self.half_space_start) // max(length, 1), self.num_periods - 1)
        start = self.half_space_start + period * length
        end = self.half_space_start + self.prune_steps if period == self.num_periods - 1 else start + length
        return period, start, end

    def target_at(self, step: int | None = None) -> float:
        """Fraction of cost the zero groups should hold by the end of the current period (0 before the window)."""
        if self.target is None:
            return 0.0
        step = self.step_count if step is None else step
        if step < self.half_space_start:
            return 0.0
        bounds = self._period_bounds(step)
        period = self.num_periods - 1 if bounds is None else bounds[0]
        return self.target * (period + 1) / self.num_periods

    # ---- the step ----

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        state = self.hspg_state
        k = state["step"]
        groups = self.groups

        # 1. Base direction for every parameter; ungrouped ones step now (in place, like torch's AdamW), grouped ones
        #    keep their trial update Δ for the half-space test.
        deltas: dict[torch.Tensor, torch.Tensor] = {}
        lrs: dict[torch.Tensor, float] = {}
        for param_group in self.param_groups:
            for p in param_group["params"]:
                if p.grad is None:
                    continue
                if p in self._grouped:
                    deltas[p], lrs[p] = self._base_update(p, param_group), param_group["lr"]
                else:
                    self._base_update(p, param_group, apply=True)

        # 2. Per-group quantities, accumulated tensor by tensor: ‖x_g‖², x_gᵀΔ_g, Σ α_t‖x_t‖², and Taylor x_gᵀ∇_g.
        num = groups.num_groups
        device = state["zero"].device
        sq = torch.zeros(num, device=device)
        delta_dot = torch.zeros(num, device=device)
        lr_sq = torch.zeros(num, device=device)
        taylor = torch.zeros(num, device=device)
        mixed = self.target is not None and self.saliency == "mixed"
        grad_sq = torch.zeros(num, device=device) if mixed else None
        for t in groups.tensors:
            x = t.param.detach()
            x_sq = t.per_group_sum(x.float().square())
            sq[t.span] += x_sq
            lr_sq[t.span] += lrs.get(t.param, 0.0) * x_sq
            if t.param in deltas:
                delta_dot[t.span] += t.per_group_sum(deltas[t.param].float() * x)
                taylor[t.span] += t.per_group_sum(t.param.grad.float() * x)
                if mixed:
                    grad_sq[t.span] += t.per_group_sum(t.param.grad.float().square())
        if self.target is not None:
            decay = self.taylor_decay if k > 0 or self.saliency_zero_init else 0.0
            score = taylor.square() if self.saliency == "fisher" else taylor.abs()
            state["taylor"].mul_(decay).add_(score, alpha=1 - decay)
            if mixed:
                # 1 − cos(x_g, ∇_g) ∈ [0, 2]: small when a descent step would shrink the group (the loss itself asks
                # for less of it), large when it would grow it. A zero group or gradient counts as orthogonal (1).
                denominator = sq.sqrt() * grad_sq.sqrt()
                cosine = torch.where(denominator > 0, taylor / denominator.clamp_min(1e-30), torch.zeros_like(taylor))
                state["direction"].mul_(decay).add_(1 - cosine.clamp(-1, 1), alpha=1 - decay)

        zero = state["zero"]
        nonzero = ~zero
        norm = sq.sqrt()
        safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))

        # 3. Which groups are penalised, and how strongly. The penalty step on tensor t of group g is
        #    c_t,g · x_t with c_t,g = α_t · λ_g/‖x_g‖ + shrink_g (shrink_g: the target mode's adaptive part).
        lam_over_norm = torch.zeros(num, device=device)
        shrink = torch.zeros(num, device=device)
        candidates = torch.zeros(num, dtype=torch.bool, device=device)
        forced = torch.zeros(num, dtype=torch.bool, device=device)
        bounds = self._period_bounds(k)
        if self.target is None:
            lam_over_norm = torch.where(nonzero, self.lmbda / safe_norm, lam_over_norm)
            candidates = nonzero if self.in_stage2(k) else candidates
            state["last_lambda"] = self.lmbda
        elif k < self.half_space_start:
            lam_over_norm = torch.where(nonzero, self.lmbda / safe_norm, lam_over_norm)
            state["last_lambda"] = self.lmbda
        elif bounds is not None:
            period, start, end = bounds
            if period != state["period"]:
                self._choose_redundant(period, sq)
                state["period"] = period
            redundant = state["redundant"] & nonzero
            remaining = end - k  # steps left in this period, this one included
            # λ_g ≥ λ such that the penalty alone takes ‖x_g‖ to zero linearly by the period's end.
            lam_over_norm = torch.where(redundant, self.lmbda / safe_norm, lam_over_norm)
            shrink = torch.where(redundant, torch.full_like(shrink, 1.0 / remaining), shrink)
            candidates = redundant
            if remaining == 1:
                forced = redundant
            mean_lr = float(lr_sq.sum() / sq.sum()) if sq.sum() > 0 else 0.0
            n_red = int(redundant.sum())
            state["last_lambda"] = (
                self.lmbda + float((norm[redundant] * shrink[redundant]).mean()) / max(mean_lr, 1e-12) if n_red else 0.0
            )
        else:
            state["last_lambda"] = 0.0  # after the window: the zero set is frozen, the rest trains plainly

        # 4. Half-space test on the trial point x̂ = x − Δ − c·x:  x̂ᵀx = ‖x‖² − xᵀΔ − λ_g/‖x_g‖·Σα_t‖x_t‖² − shrink·‖x‖².
        if self.in_stage2(k):
            trial_dot = sq - delta_dot - lam_over_norm * lr_sq - shrink * sq
            project = candidates & (trial_dot < self.epsilon * sq)
            zero |= project | forced

        # 5. Apply: x ← (1 − c)·x − Δ, then hold every zero group (and its moments) at exactly zero. Tensors whose
        #    groups all have c = 0, or none of which is zero, skip those passes (one small host copy decides).
        penalised = ((lam_over_norm != 0) | (shrink != 0)).cpu()
        zero_host = zero.cpu()
        for p, t in self._grouped.items():
            if penalised[t.span].any():
                coeff = lam_over_norm[t.span] * lrs.get(p, 0.0) + shrink[t.span]
                t.view(p.data).mul_(t.broadcast(1 - coeff).to(p.dtype))
            if p in deltas:
                p.sub_(deltas[p])
            if not zero_host[t.span].any():
                continue
            mask = t.broadcast(zero[t.span])
            t.view(p.data).masked_fill_(mask, 0.0)
            for buffer_name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                buffer = self.state[p].get(buffer_name)
                if buffer is not None:
                    t.view(buffer).masked_fill_(mask, 0.0)

        state["step"] = k + 1
        return loss

    def _base_update(self, p: torch.Tensor, param_group: dict, apply: bool = False) -> torch.Tensor | None:
        """The base optimizer's step Δ (x_new = x − Δ) for one parameter, updating its moments. With `apply`, the
        step is taken in place instead and nothing is returned (no full-size Δ is kept)."""
        grad = p.grad
        lr, weight_decay = param_group["lr"], param_group["weight_decay"]
        state = self.state[p]
        if self.direction == "adamw":
            beta1, beta2 = param_group["betas"]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"]
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias1 = 1 - beta1**step
            bias2_sqrt = math.sqrt(1 - beta2**step)
            # One full-size temporary: denom, which then becomes Δ in place.
            denom = state["exp_avg_sq"].sqrt().div_(bias2_sqrt).add_(param_group["eps"])
            if apply:
                if weight_decay:
                    p.mul_(1 - lr * weight_decay)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)
                return None
            delta = torch.div(state["exp_avg"], denom, out=denom).mul_(lr / bias1)
            if weight_decay:
                delta.add_(p, alpha=lr * weight_decay)
            return delta
        # SGD with momentum and (coupled) L2 weight decay, as torch.optim.SGD.
        d = grad.add(p, alpha=weight_decay) if weight_decay else grad
        momentum = param_group["momentum"]
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = d.detach().clone()
            else:
                buffer.mul_(momentum).add_(d)
            d = buffer
        if apply:
            p.sub_(d, alpha=lr)
            return None
        return d * lr

    def _choose_redundant(self, period: int, sq: torch.Tensor) -> None:
        """Mark the least salient non-zero groups redundant, until the zero groups and the redundant ones together
        hold this period's share of the target. Never more: a group that would overshoot is skipped and smaller ones
        fill the rest."""
        state = self.hspg_state
        zero = state["zero"]
        device = zero.device
        costs = self.costs.to(device).double()
        kinds = self.groups.kinds.to(device)
        goal = self.target * (period + 1) / self.num_periods * self.total_cost
        if self.saliency == "magnitude":
            importance = sq.double() / self.groups.sizes.to(device)
        elif self.saliency == "mixed":
            importance = self._mixed_importance(sq, ~zero)
        else:
            importance = state["taylor"].double()

        redundant = torch.zeros_like(zero)
        removable = float(costs.sum())
        # Within one layer a layer-relative score ranks like the raw one, so "uniform" uses it too (for the fill).
        score = importance / costs if self.allocation == "global" else self._layer_relative(importance, ~zero)
        # Groups that may go without taking their layer below its floor (all of them without a floor). Zero groups
        # stay in every pool, so that what a pool already holds is counted.
        allowed = self._above_layer_floor(score, zero) if self.layer_floor > 0 else torch.ones_like(zero)
        if self.allocation == "global":
            _mark_least_salient(redundant, allowed, goal, score, costs, zero)
        elif self.allocation == "balanced":
            # Each kind's share of the goal is its share of the removable cost; scores are compared within a kind.
            for kind in torch.unique(kinds).tolist():
                member = kinds == kind
                _mark_least_salient(redundant, member & allowed, goal * float(costs[member].sum()) / removable, score,
                                    costs, zero)
        else:
            self._mark_uniform(redundant, allowed, period, score, costs, kinds, zero, removable)
        last_period = period == self.num_periods - 1
        if (self.allocation != "global" or self.layer_floor > 0) and (self.allocation != "uniform" or last_period):
            # Each pool stops short of its share by less than one of its groups; the cheapest groups (neurons), least
            # salient first, fill what is left, so the target is met to within one neuron. The floor yields to the
            # target: only when it is at 1 − target can rounding leave the allowed groups short, and then the second
            # pass takes the last few from below it ("global" needs these passes only for that). Without a floor
            # every group is allowed and the second pass finds nothing. "uniform" fills only in the last period: an
            # earlier fill would give neurons a share that their layer's heads take back later, and zero groups stay.
            for pool in (allowed, ~allowed):
                need = goal - float(costs[zero | redundant].sum())
                candidates = torch.nonzero(pool & ~zero & ~redundant).flatten()
                order = candidates[torch.argsort(score[candidates])]
                order = order[torch.argsort(costs[order], stable=True)]
                redundant[order[_fill_budget(costs[order], need)]] = True
        state["redundant"] = redundant

    def _mark_uniform(self, redundant, allowed, period, score, costs, kinds, zero, removable) -> None:
        """The uniform allocation: every layer gives up the target's fraction of its cost. Its layout is fixed by the
        final target alone (the one a single period would choose): the coarse groups (heads) the nearest whole number
        of their share of the layer's goal (never more than the goal), the fine ones (neurons) the rest. Each period
        takes the period's fraction of that, the coarse groups rounded down to whole groups and the fine ones the rest
        of the period's goal, but never beyond their final share, so that whatever the number of periods, the last
        one ends at that layout."""
        device = zero.device
        layers = self.groups.layers.to(device)
        fraction = (period + 1) / self.num_periods
        final_goal = self.target * self.total_cost
        for layer in range(self.groups.num_layers):
            in_layer = layers == layer
            layer_cost = float(costs[in_layer].sum())
            final_layer_goal = final_goal * layer_cost / removable
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
                    share = math.floor(fraction * final_share / unit + 1e-9) * unit
                else:
                    taken = float(costs[in_layer & ~member & (zero | redundant)].sum())
                    share = min(fraction * final_layer_goal - taken, final_layer_goal - final_coarse)
                _mark_least_salient(redundant, member & allowed, share, score, costs, zero)

    def _above_layer_floor(self, score: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """The zero groups and, in each layer, the least salient live groups of each kind that can go before the
        layer is down to ⌊f · n⌋ of its n groups of that kind, f = min(layer_floor, 1 − target)."""
        key, slots = self._pool_keys(zero.device)
        size = torch.bincount(key, minlength=slots)
        keep = torch.floor(min(self.layer_floor, 1 - self.target) * size.double() + 1e-9).long()
        removable = (size - keep - torch.bincount(key[zero], minlength=slots)).clamp_min(0)
        # Rank the live groups within their (kind, layer) pool, least salient first: sort by score, then (stably) by
        # pool, and subtract each pool's first position.
        live = torch.nonzero(~zero).flatten()
        order = live[torch.argsort(score[live])]
        order = order[torch.argsort(key[order], stable=True)]
        pool = key[order]
        rank = torch.arange(len(order), device=zero.device) - torch.searchsorted(pool, pool)
        allowed = zero.clone()
        allowed[order[rank < removable[pool]]] = True
        return allowed

    def _pool_keys(self, device: torch.device) -> tuple[torch.Tensor, int]:
        """Each group's (kind, layer) pool as one integer, and the number of possible pools."""
        key = self.groups.kinds.to(device) * (self.groups.num_layers + 1) + self.groups.layers.to(device)
        return key, int(key.max()) + 1

    def _mixed_importance(self, sq: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """HESSO's (OTO v3) saliency: an equal-weight sum of five criteria, each scaled to unit L2 norm over the live
        groups of its (kind, layer) pool, so that every criterion has the same say in every ranking whatever its
        units: magnitude ‖x_g‖, average magnitude ‖x_g‖/|g|, direction 1 − cos(x_g, ∇_g), first-order Taylor
        |x_gᵀ∇_g| and second-order Taylor ½(x_gᵀ∇_g)² (the last three from this optimizer's running averages).
        Within one pool every group has the same size, so the two magnitudes rank alike (magnitude counts twice);
        HESSO scales over all groups at once and adds cos + 1, which ranks a group the loss asks to shrink as more
        important; here that is the less important side, as the first-order Taylor estimate of removing it says."""
        device = sq.device
        norm = sq.double().sqrt()
        taylor = self.hspg_state["taylor"].double()
        criteria = (norm, norm / self.groups.sizes.to(device), self.hspg_state["direction"].double(), taylor,
                    0.5 * taylor.square())
        key, slots = self._pool_keys(device)
        importance = torch.zeros_like(norm)
        for values in criteria:
            values = torch.where(alive, values, torch.zeros_like(values))
            scale = torch.zeros(slots, dtype=values.dtype, device=device).index_add_(0, key, values.square()).sqrt()
            importance += values / scale[key].clamp_min(torch.finfo(values.dtype).tiny)
        return importance / len(criteria)

    def _layer_relative(self, importance: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """Each group's importance divided by the mean importance of the live groups of its kind in its layer, so
        that layers whose scores run larger or smaller as a whole are ranked fairly against each other."""
        device = importance.device
        key, slots = self._pool_keys(device)
        total = torch.zeros(slots, dtype=importance.dtype, device=device).index_add_(0, key[alive], importance[alive])
        count = torch.zeros(slots, dtype=importance.dtype, device=device).index_add_(
            0, key[alive], torch.ones_like(importance[alive]))
        mean = total / count.clamp_min(1)
        return importance / mean[key].clamp_min(torch.finfo(importance.dtype).tiny)

    # ---- reporting ----

    def sparsity_report(self) -> dict:
        """What the optimizer has removed so far: fractions kept, heads/neurons kept, current λ, stage."""
        zero = self.hspg_state["zero"].cpu()
        groups = self.groups
        report = {
            "group_sparsity": float(zero.float().mean()) if len(zero) else 0.0,
            "lambda": self.hspg_state["last_lambda"],
            "stage": 2 if self.in_stage2() else 1,
        }
        if groups.is_transformer:
            flops, params = groups.costs("flops", self.seq_len), groups.costs("params")
            report.update(
                heads_kept=sum(groups.heads_per_layer) - int((zero & (groups.kinds == HEAD)).sum()),
                ffn_neurons_kept=sum(groups.neurons_per_layer) - int((zero & (groups.kinds == NEURON)).sum()),
                encoder_flops_kept=1 - float(flops[zero].sum()) / groups.total_cost("flops", self.seq_len),
                encoder_params_kept=1 - float(params[zero].sum()) / groups.total_cost("params"),
            )
        if self.target is not None:
            report[f"{self.target_unit}_removed"] = float(self.costs[zero].sum()) / self.total_cost
            report["target_now"] = self.target_at()
        return report

    # ---- state ----

    def state_dict(self) -> dict:
        state = super().state_dict()
        hspg = dict(self.hspg_state)
        hspg["num_groups"] = self.groups.num_groups
        state["hspg"] = hspg
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        hspg = state_dict.pop("hspg", None)
        if hspg is None:
            raise ValueError(
                "This optimizer state has no HSPG part (it was saved by another optimizer, e.g. AdamW). "
                "Resume from a checkpoint written with HSPG, or start the optimizer fresh."
            )
        if hspg["num_groups"] != self.groups.num_groups:
            raise ValueError(
                f"This HSPG state is for a model with {hspg['num_groups']} zero-invariant groups, but the model "
                f"being trained has {self.groups.num_groups}: the checkpoint belongs to another model."
            )
        super().load_state_dict(state_dict)
        device = self.hspg_state["zero"].device
        for key in ("zero", "redundant", "taylor"):
            self.hspg_state[key] = hspg[key].to(device)
        if "direction" in hspg:  # states saved before saliency="mixed" existed have none (and were not "mixed")
            self.hspg_state["direction"] = hspg["direction"].to(device)
        for key in ("step", "period", "last_lambda"):
            self.hspg_state[key] = hspg[key]


def _mark_least_salient(redundant: torch.Tensor, member: torch.Tensor, share: float, score: torch.Tensor,
                        costs: torch.Tensor, zero: torch.Tensor) -> None:
    """Mark the least salient live groups of `member` redundant until the pool's zero and newly marked groups hold
    `share` of the cost (never more)."""
    need = share - float(costs[zero & member].sum())
    candidates = torch.nonzero(member & ~zero & ~redundant).flatten()
    order = candidates[torch.argsort(score[candidates])]
    redundant[order[_fill_budget(costs[order], need)]] = True


def _fill_budget(costs: torch.Tensor, budget: float) -> torch.Tensor:
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
    # Only the few items after the first overshoot need a look: costs come in two sizes (head, neuron).
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


def _check_arguments(lr, direction, lmbda, epsilon, half_space_start, target, target_unit, prune_steps, num_periods,
                     saliency, allocation, layer_floor, betas, momentum, weight_decay, taylor_decay):
    def fail(message):
        raise ValueError(f"HSPG: {message}")

    if not lr >= 0:
        fail(f"lr must be ≥ 0, got {lr}.")
    if direction not in DIRECTIONS:
        fail(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    if not lmbda >= 0:
        fail(f"lmbda (λ) must be ≥ 0, got {lmbda}: it is the strength of the group penalty.")
    if not 0 <= epsilon < 1:
        fail(f"epsilon (ε) must lie in [0, 1), got {epsilon}: 0 is the paper's most cautious projection.")
    if half_space_start < 0:
        fail(f"half_space_start must be ≥ 0, got {half_space_start}.")
    if target is not None:
        if not 0 <= target < 1:
            fail(f"target must lie in [0, 1) (the fraction of encoder {target_unit} to remove), got {target}.")
        if prune_steps is None or prune_steps < 1:
            fail(f"with a target, prune_steps (the length of the pruning window) must be ≥ 1, got {prune_steps}.")
        if num_periods < 1 or num_periods > prune_steps:
            fail(f"num_periods must lie in [1, prune_steps={prune_steps}], got {num_periods}.")
    if target_unit not in TARGET_UNITS:
        fail(f"target_unit must be one of {TARGET_UNITS}, got {target_unit!r}.")
    if saliency not in SALIENCIES:
        fail(f"saliency must be one of {SALIENCIES}, got {saliency!r}.")
    if allocation not in ALLOCATIONS:
        fail(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}.")
    if not 0 <= layer_floor < 1:
        fail(f"layer_floor must lie in [0, 1) (the fraction of each layer's heads and neurons kept at least), "
             f"got {layer_floor}.")
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        fail(f"betas must lie in [0, 1), got {betas}.")
    if not 0 <= momentum < 1:
        fail(f"momentum must lie in [0, 1), got {momentum}.")
    if weight_decay < 0:
        fail(f"weight_decay must be ≥ 0, got {weight_decay}.")
    if not 0 <= taylor_decay < 1:
        fail(f"taylor_decay must lie in [0, 1), got {taylor_decay}.")
