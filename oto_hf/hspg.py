"""HSPG: Half-Space Stochastic Projected Gradient (Only-Train-Once, NeurIPS 2021), with an AdamW direction and a
FLOPs/parameter target.

The problem is min_x f(x) + λ Σ_g ‖x_g‖₂ over the zero-invariant groups g.

* Stage 1 (step < `half_space_start_step`): a subgradient step x ← x − α(d(x) + λ x_g/‖x_g‖) on every non-zero
  group, where d is the direction of the base optimizer (SGD with momentum, or AdamW's adaptive moments).
* Stage 2: the same trial point x̂, then every candidate group with x̂_gᵀx_g < ε‖x_g‖² is projected to exactly zero.
  Zero groups stay zero for good: their parameters and optimizer moments are held at zero.

Parameters outside any group take the plain base step (with weight decay where the direction has it).

The group penalty is decoupled from the adaptive moments, like AdamW's weight decay: the step is
x̂ = x − α·Adam(∇f) − α·λ·x_g/‖x_g‖, so λ means "norm removed per unit of learning rate" in both directions.

**Target mode** (`target` set: the fraction of encoder FLOPs or parameters to remove). λ alone cannot promise a
size, so, in the spirit of DHSPG (OTO v2), stage 2 becomes a pruning window of `prune_steps` steps split into
`num_periods` periods. At the start of each period the optimizer's `SelectionPolicy` (oto_hf.selection: a saliency,
a layout, a layer floor) marks the least salient non-zero groups redundant until the period's share of the target is
covered (never more). Redundant groups take the subgradient step with an adaptive λ_g large enough to bring them to
zero by the end of the period (linearly in norm), and the half-space projection; whatever is left of them at the
period's end is projected. Other groups take the plain base step. After the window the zero set is frozen, so the
target is reached to within one group's cost and held. With a speed target (`speedup` and the model's measured
`latency_table`) the same window spends predicted time instead of cost (`oto_hf.selection.TimeBudget`). All group
work is done with whole-tensor operations, never one group at a time.

Why these defaults: docs/experiments.md.
"""

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch.optim import Optimizer

from .groups import HEAD, NEURON, ZeroInvariantGroups
from .selection import Goal, Layout, Pools, Saliency, SelectionPolicy, StreamCosts
from .settings import RETIRED_OPTIONS, OTOSettings


@dataclass
class GroupSums:
    """This step's per-group quantities, summed over the group's tensors: ‖x_g‖² (`sq`), x_gᵀΔ_g (`delta_dot`),
    Σ_t α_t‖x_t‖² (`lr_sq`), x_gᵀ∇_g f (`grad_dot`) and, where the saliency needs it, ‖∇_g f‖² (`grad_sq`)."""

    sq: torch.Tensor
    delta_dot: torch.Tensor
    lr_sq: torch.Tensor
    grad_dot: torch.Tensor
    grad_sq: torch.Tensor | None


@dataclass
class Penalty:
    """This step's group penalty. The step on tensor t of group g is c_t,g · x_t with c_t,g = α_t · λ_g/‖x_g‖ +
    shrink_g (`lam_over_norm`: λ_g/‖x_g‖; `shrink`: the target mode's adaptive part). `candidates` may be projected
    by the half-space test; `forced` groups are projected whatever it says (the period's last step)."""

    lam_over_norm: torch.Tensor
    shrink: torch.Tensor
    candidates: torch.Tensor
    forced: torch.Tensor


class HSPG(Optimizer):
    """Half-Space Stochastic Projected Gradient over the zero-invariant `groups` of a model.

    Args:
        params: the model's parameters or parameter groups (all of the model's trainable parameters, as for any
            optimizer; grouped and ungrouped alike).
        groups: the `ZeroInvariantGroups` of that model.
        lr: step size α.
        settings: an `OTOSettings` with the schedule in steps (e.g. `OTOTrainingArguments.oto_settings.in_steps(n)`);
            when given, it replaces every keyword below except betas, eps and weight_decay.
        direction: "adamw" (adaptive moments, decoupled weight decay) or "sgd" (momentum, L2 weight decay).
        lmbda: λ ≥ 0, the group-lasso strength.
        epsilon: ε ∈ [0, 1), how aggressively the half-space step projects (larger projects more).
        half_space_start_step: N_P, the optimizer step at which stage 2 (projection) starts. (Its old name
            `half_space_start` still works for one release, with a DeprecationWarning.)
        target: fraction in [0, 1) of encoder FLOPs (or parameters, see `target_unit`) to remove; None for the
            paper's λ-only mode.
        target_unit: "flops" (per example at `seq_len` tokens) or "params".
        seq_len: the sequence length at which FLOPs are counted (default: the groups' own, 384 for text models).
        speedup: instead of `target`, a speed target: the measured forward time of the whole model divided by this
            (> 1), on the runtime and shape of `latency_table` (required with it: `oto_hf.latency.
            measure_latency_table(model, settings.latency_spec())`; with `prune_hidden`, `stream_points=oto_hf.
            latency.STREAM_POINTS` too). The layout spends predicted time; the window, periods and floor keep their
            meaning (see `oto_hf.selection.LatencyLayout`). A speedup beyond emptying every prunable group is refused
            with the largest one reachable.
        latency_runtime, latency_shape, latency_threads: where `speedup` holds (recorded in the settings; the table
            is what is used).
        latency_table: the `oto_hf.latency.LatencyTable` of this model on that runtime and shape.
        prune_steps: length of the pruning window that starts at `half_space_start_step` (required with a target).
        num_periods: the window is split into this many periods; the target grows in equal steps per period.
        saliency: how redundant groups are scored: "taylor" (|x_gᵀ∇_g f|, averaged over steps, the default),
            "fisher" ((x_gᵀ∇_g f)², averaged), "magnitude" (‖x_g‖²/|g|) or "mixed" (HESSO's mix of five criteria),
            or an `oto_hf.selection.Saliency` object.
        allocation: the layout, how the target is shared out: "uniform" (the default with `target`: every layer
            removes the same fraction of its cost, the nearest whole number of heads, neurons for the rest; least
            salient first within the layer), "balanced" (heads and neurons each remove that fraction of their cost;
            groups ranked across layers by saliency / its layer's mean), "latency" (the default with `speedup`: see
            `oto_hf.selection.LatencyLayout`), or an `oto_hf.selection.Layout` object. None: that default.
        layer_floor: with a target, every layer keeps at least ⌊f · n⌋ of its n heads and of its n FFN neurons,
            f = min(layer_floor, 1 − target); 0 sets no floor. Default 0.25 (see `oto_hf.selection.LayerFloor`).
        taylor_decay: decay of the saliency's running averages (one update per step; they start at zero).
        betas, eps: AdamW moments. momentum: SGD momentum. weight_decay: as in AdamW / SGD.
    """

    def __init__(
        self,
        params: Iterable,
        groups: ZeroInvariantGroups,
        lr: float = 1e-3,
        *,
        settings: OTOSettings | None = None,
        direction: str = "adamw",
        lmbda: float = 1e-3,
        epsilon: float = 0.0,
        half_space_start_step: int = 0,
        target: float | None = None,
        target_unit: str = "flops",
        seq_len: int | None = None,
        speedup: float | None = None,
        latency_runtime: str = "torch",
        latency_shape: str = "1x128",
        latency_threads: int | None = None,
        latency_table=None,
        prune_steps: int | None = None,
        num_periods: int = 1,
        saliency: str | Saliency = "taylor",
        allocation: str | Layout | None = None,
        layer_floor: float = 0.25,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        taylor_decay: float = 0.99,
        half_space_start: int | None = None,
        saliency_zero_init: bool | None = None,
    ):
        if saliency_zero_init is not None:
            _refuse_retired("saliency_zero_init", saliency_zero_init, keeps=True)
        if half_space_start is not None:
            warnings.warn("HSPG(half_space_start=...) is now half_space_start_step=... (an optimizer step; the "
                          "trainer's --oto_half_space_start is a fraction of training); the old name goes in the "
                          "next release.", DeprecationWarning, stacklevel=2)
            half_space_start_step = half_space_start
        if settings is None:
            settings = OTOSettings(
                target=target, target_unit=target_unit, seq_len=seq_len, speedup=speedup,
                latency_runtime=latency_runtime, latency_shape=latency_shape, latency_threads=latency_threads,
                lmbda=lmbda, epsilon=epsilon,
                half_space_start_step=half_space_start_step, prune_steps=prune_steps, num_periods=num_periods,
                direction=direction, momentum=momentum, saliency=saliency, allocation=allocation,
                layer_floor=layer_floor, taylor_decay=taylor_decay)
        elif settings.half_space_start_step is None:
            raise ValueError("HSPG acts on optimizer steps, but these settings give the schedule as fractions of "
                             "training: pass settings.in_steps(number of training steps).")
        _check_base_arguments(lr, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=settings.momentum, weight_decay=weight_decay)
        super().__init__(params, defaults)

        self.groups = groups
        self.settings = settings
        self.policy: SelectionPolicy = settings.selection_policy()
        self.latency_table = latency_table
        if settings.speedup is not None and not groups.is_transformer:
            raise ValueError("a speed target needs the groups of a supported encoder (zero_invariant_groups(model)): "
                             "a custom partition has no heads and FFN blocks to time")
        if settings.speedup is not None and latency_table is None:
            raise ValueError("a speed target needs the latency table of the model on its runtime and shape: pass "
                             "latency_table=oto_hf.latency.measure_latency_table(model, settings.latency_spec())")
        if settings.speedup is not None and settings.seq_len is None and groups.family.default_tokens is None:
            # Text: the FLOPs the cost layouts count are those of the served length (an image's is fixed).
            settings = replace(settings, seq_len=latency_table.spec["seq_len"])
            self.settings = settings
        self.seq_len = settings.seq_len or groups.default_seq_len

        optimized = {p for group in self.param_groups for p in group["params"]}
        missing = [t.name for t in groups.tensors if t.param not in optimized]
        if missing:
            raise ValueError(
                f"HSPG must optimize every grouped parameter, but {len(missing)} are not among `params` "
                f"(e.g. {missing[:3]}). Pass all of the model's parameters (model.parameters())."
            )
        # A grouped parameter tensor belongs to one set of groups (heads or neurons of one layer), or two when the
        # stream's channels are groups too (a Q weight: heads by its rows, channels by its columns).
        # {param: [(its place in groups.tensors, view)]}
        self._views: dict[torch.Tensor, list[tuple[int, object]]] = {}
        for i, t in enumerate(groups.tensors):
            self._views.setdefault(t.param, []).append((i, t))

        # A custom (non-BERT) partition has no FLOPs: without a target, count it in parameters for reporting.
        cost_unit = settings.target_unit if (groups.is_transformer or settings.has_target) else "params"
        self.cost_unit = cost_unit
        self.costs = groups.costs(cost_unit, settings.seq_len)
        self.total_cost = groups.total_cost(cost_unit, settings.seq_len)
        settings.check_target_fits(groups)
        self.time_budget = None
        if settings.speedup is not None:
            settings.check_speedup_fits(latency_table, groups)
            self.time_budget = latency_table.budget(groups, settings.speedup)

        # A zero channel is zero-invariant only with the stream's norms counting the live channels alone.
        groups.track_live_width()
        device = groups.device
        num = groups.num_groups
        self.hspg_state = {
            "step": 0,
            "zero": groups.is_zero().to(device),
            "redundant": torch.zeros(num, dtype=torch.bool, device=device),
            # The saliency's running averages (oto_hf.selection.Saliency.observe): of its score of x_gᵀ∇_g f, and of
            # 1 − cos(x_g, ∇_g) (kept only by the "mixed" saliency).
            "taylor": torch.zeros(num, dtype=torch.float32, device=device),
            "direction": torch.zeros(num, dtype=torch.float32, device=device),
            "period": -1,
            "last_lambda": 0.0,
        }

    # ---- schedule ----

    @property
    def step_count(self) -> int:
        return self.hspg_state["step"]

    def in_stage2(self, step: int | None = None) -> bool:
        return (self.step_count if step is None else step) >= self.settings.half_space_start_step

    def _period_bounds(self, step: int) -> tuple[int, int, int] | None:
        """(period index, first step, last step + 1) of the pruning period holding `step`, or None outside."""
        start, window_end = self.settings.half_space_start_step, self.settings.window_end_step
        if window_end is None or step < start or step >= window_end:
            return None
        num_periods = self.settings.num_periods
        length = self.settings.prune_steps // num_periods
        period = min((step - start) // max(length, 1), num_periods - 1)
        first = start + period * length
        end = window_end if period == num_periods - 1 else first + length
        return period, first, end

    def target_at(self, step: int | None = None) -> float:
        """Fraction of cost the zero groups should hold by the end of the current period (0 before the window)."""
        target = self.settings.target
        if target is None:
            return 0.0
        step = self.step_count if step is None else step
        if step < self.settings.half_space_start_step:
            return 0.0
        bounds = self._period_bounds(step)
        period = self.settings.num_periods - 1 if bounds is None else bounds[0]
        return target * (period + 1) / self.settings.num_periods

    # ---- the step ----

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        k = self.hspg_state["step"]
        deltas, lrs = self._base_directions()
        sums = self._group_sums(deltas, lrs)
        if self.settings.has_target:
            self.policy.saliency.observe(self.hspg_state, sums.grad_dot, sums.sq, sums.grad_sq)
        penalty = self._penalty(k, sums)
        if self.in_stage2(k):
            self._half_space_projection(sums, penalty)
        self._apply(deltas, lrs, penalty)
        self.hspg_state["step"] = k + 1
        return loss

    def _base_directions(self) -> tuple[dict[torch.Tensor, torch.Tensor], dict[torch.Tensor, float]]:
        """The base direction for every parameter with a gradient: ungrouped ones step now (in place, like torch's
        AdamW); grouped ones keep their trial update Δ (returned with their learning rate) for the half-space test."""
        deltas: dict[torch.Tensor, torch.Tensor] = {}
        lrs: dict[torch.Tensor, float] = {}
        for param_group in self.param_groups:
            for p in param_group["params"]:
                if p.grad is None:
                    continue
                if p in self._views:
                    deltas[p], lrs[p] = self._base_update(p, param_group), param_group["lr"]
                else:
                    self._base_update(p, param_group, apply=True)
        return deltas, lrs

    def _group_sums(self, deltas: dict, lrs: dict) -> GroupSums:
        """The per-group sums of this step, accumulated tensor by tensor."""
        num = self.groups.num_groups
        device = self.hspg_state["zero"].device
        sq = torch.zeros(num, device=device)
        delta_dot = torch.zeros(num, device=device)
        lr_sq = torch.zeros(num, device=device)
        grad_dot = torch.zeros(num, device=device)
        needs_grad_sq = self.settings.has_target and self.policy.saliency.needs_gradient_norms
        grad_sq = torch.zeros(num, device=device) if needs_grad_sq else None
        # Each parameter's elementwise products once, however many sets of groups it belongs to (a tensor in two,
        # with the stream's channels, would otherwise compute them twice); each view's per-group sums are then added
        # in the order of `groups.tensors`, so the sums do not depend on how the views are visited.
        partial: list[tuple] = [()] * len(self.groups.tensors)
        for p, views in self._views.items():
            x = p.detach().float()
            products = [x.square()]
            if p in deltas:
                grad = p.grad.float()
                products += [deltas[p].float() * x, grad * x] + ([grad.square()] if needs_grad_sq else [])
            for i, t in views:
                partial[i] = tuple(t.per_group_sum(product) for product in products)
            del products
        for t, sums in zip(self.groups.tensors, partial):
            sq[t.span] += sums[0]
            lr_sq[t.span] += lrs.get(t.param, 0.0) * sums[0]
            if len(sums) > 1:
                delta_dot[t.span] += sums[1]
                grad_dot[t.span] += sums[2]
                if needs_grad_sq:
                    grad_sq[t.span] += sums[3]
        return GroupSums(sq=sq, delta_dot=delta_dot, lr_sq=lr_sq, grad_dot=grad_dot, grad_sq=grad_sq)

    def _penalty(self, k: int, sums: GroupSums) -> Penalty:
        """Which groups are penalised at step `k`, and how strongly: every non-zero group by λ without a target or
        before the window; in a pruning period only the redundant ones (chosen at its start), with the adaptive
        shrink; nothing after the window. Records the effective λ for the logs."""
        state, settings = self.hspg_state, self.settings
        nonzero = ~state["zero"]
        norm = sums.sq.sqrt()
        safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        num, device = len(norm), norm.device
        penalty = Penalty(lam_over_norm=torch.zeros(num, device=device), shrink=torch.zeros(num, device=device),
                          candidates=torch.zeros(num, dtype=torch.bool, device=device),
                          forced=torch.zeros(num, dtype=torch.bool, device=device))
        bounds = self._period_bounds(k)
        if not settings.has_target or k < settings.half_space_start_step:
            penalty.lam_over_norm = torch.where(nonzero, settings.lmbda / safe_norm, penalty.lam_over_norm)
            if not settings.has_target and self.in_stage2(k):
                penalty.candidates = nonzero
            state["last_lambda"] = settings.lmbda
        elif bounds is not None:
            period, _, end = bounds
            if period != state["period"]:
                self.choose_redundant(period, sums.sq)
                state["period"] = period
            redundant = state["redundant"] & nonzero
            remaining = end - k  # steps left in this period, this one included
            # λ_g ≥ λ such that the penalty alone takes ‖x_g‖ to zero linearly by the period's end.
            penalty.lam_over_norm = torch.where(redundant, settings.lmbda / safe_norm, penalty.lam_over_norm)
            penalty.shrink = torch.where(redundant, torch.full_like(penalty.shrink, 1.0 / remaining), penalty.shrink)
            penalty.candidates = redundant
            if remaining == 1:
                penalty.forced = redundant
            state["last_lambda"] = self._effective_lambda(sums, norm, penalty.shrink, redundant)
        else:
            state["last_lambda"] = 0.0  # after the window: the zero set is frozen, the rest trains plainly
        return penalty

    def _effective_lambda(self, sums: GroupSums, norm: torch.Tensor, shrink: torch.Tensor,
                          redundant: torch.Tensor) -> float:
        """The λ a redundant group feels on average (λ plus the shrink in units of the mean learning rate), for the
        logs; 0 when no group is redundant."""
        sq_total = sums.sq.sum()
        mean_lr = float(sums.lr_sq.sum() / sq_total) if sq_total > 0 else 0.0
        if not int(redundant.sum()):
            return 0.0
        return self.settings.lmbda + float((norm[redundant] * shrink[redundant]).mean()) / max(mean_lr, 1e-12)

    def _half_space_projection(self, sums: GroupSums, penalty: Penalty) -> None:
        """Add to the zero set the candidates whose trial point x̂ = x − Δ − c·x left the half-space
        x̂ᵀx ≥ ε‖x‖² (x̂ᵀx = ‖x‖² − xᵀΔ − λ_g/‖x_g‖·Σα_t‖x_t‖² − shrink·‖x‖²), and the forced ones."""
        sq = sums.sq
        trial_dot = sq - sums.delta_dot - penalty.lam_over_norm * sums.lr_sq - penalty.shrink * sq
        project = penalty.candidates & (trial_dot < self.settings.epsilon * sq)
        self.hspg_state["zero"] |= project | penalty.forced

    def _apply(self, deltas: dict, lrs: dict, penalty: Penalty) -> None:
        """x ← (1 − c)·x − Δ, then every zero group (and its moments) held at exactly zero. Tensors whose groups all
        have c = 0, or none of which is zero, skip those passes (one small host copy decides)."""
        zero = self.hspg_state["zero"]
        penalised = ((penalty.lam_over_norm != 0) | (penalty.shrink != 0)).cpu()
        zero_host = zero.cpu()
        for p, placed in self._views.items():
            for _, t in placed:
                if penalised[t.span].any():
                    coeff = penalty.lam_over_norm[t.span] * lrs.get(p, 0.0) + penalty.shrink[t.span]
                    t.view(p.data).mul_(t.broadcast(1 - coeff).to(p.dtype))
            if p in deltas:
                p.sub_(deltas[p])
            for _, t in placed:
                if not zero_host[t.span].any():
                    continue
                mask = t.broadcast(zero[t.span])
                t.view(p.data).masked_fill_(mask, 0.0)
                for buffer_name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                    buffer = self.state[p].get(buffer_name)
                    if buffer is not None:
                        t.view(buffer).masked_fill_(mask, 0.0)
        # The stream's norms count only its live channels (`groups.track_live_width`): tell them which are.
        self.groups.update_live_width(zero_host)

    def _base_update(self, p: torch.Tensor, param_group: dict, apply: bool = False) -> torch.Tensor | None:
        """The base optimizer's step Δ (x_new = x − Δ) for one parameter, updating its moments. With `apply`, the
        step is taken in place instead and nothing is returned (no full-size Δ is kept)."""
        grad = p.grad
        lr, weight_decay = param_group["lr"], param_group["weight_decay"]
        state = self.state[p]
        if self.settings.direction == "adamw":
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

    # ---- the selection policy's turn ----

    def choose_redundant(self, period: int, sq: torch.Tensor) -> None:
        """Mark, for pruning period `period`, the groups the policy chooses redundant (`hspg_state["redundant"]`):
        the least salient non-zero groups until the zero groups and the redundant ones together hold the period's
        share of the target, never more. `sq`: each group's current ‖x_g‖²."""
        zero = self.hspg_state["zero"]
        stream = (StreamCosts(self.groups, self.cost_unit, self.settings.seq_len) if self.groups.prune_hidden
                  else None)
        goal = Goal(target=self.settings.target or 0.0, period=period, num_periods=self.settings.num_periods,
                    total_cost=self.total_cost, time=self.time_budget, stream=stream)
        pools = Pools.of(self.groups, self.costs, zero.device)
        self.hspg_state["redundant"] = self.policy.choose(zero, sq, self.hspg_state, pools, goal)

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
            heads, widths, params, flops = groups.layer_totals(~zero, self.seq_len)
            everything = torch.ones_like(zero)
            _, _, all_params, all_flops = groups.layer_totals(everything, self.seq_len)
            report.update(heads_kept=sum(heads), ffn_neurons_kept=sum(widths), encoder_flops_kept=flops / all_flops,
                          encoder_params_kept=params / all_params)
            if groups.prune_hidden:
                report["hidden_kept"] = groups.kept_hidden_size(~zero)
        if self.settings.target is not None:
            report[f"{self.settings.target_unit}_removed"] = 1 - self.groups.kept_cost(~zero, self.cost_unit,
                                                                                       self.settings.seq_len) / self.total_cost
            report["target_now"] = self.target_at()
        if self.time_budget is not None:
            pools = Pools.of(groups, self.costs, zero.device)
            report["predicted_speedup"] = self.time_budget.dense_seconds / self.time_budget.predict(zero, pools)
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
        self.groups.update_live_width(self.hspg_state["zero"])


def _refuse_retired(keyword: str, value: bool, keeps: bool) -> None:
    """A retired keyword: passing the behaviour that stays (`keeps`) only warns; asking for the retired one fails."""
    message = RETIRED_OPTIONS[f"oto_{keyword}"].replace(f"--oto_{keyword}", f"HSPG({keyword}=...)")
    if value == keeps:
        warnings.warn(message, DeprecationWarning, stacklevel=3)
    else:
        raise ValueError(message)


def _check_base_arguments(lr: float, betas: tuple[float, float], weight_decay: float) -> None:
    """The base optimizer's own arguments (the OTO ones are checked by OTOSettings)."""
    problems = []
    if not lr >= 0:
        problems.append(f"lr must be ≥ 0, got {lr}")
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        problems.append(f"betas must lie in [0, 1), got {betas}")
    if weight_decay < 0:
        problems.append(f"weight_decay must be ≥ 0, got {weight_decay}")
    if problems:
        raise ValueError("HSPG: " + "; ".join(problems) + ".")


__all__ = ["HSPG"]
