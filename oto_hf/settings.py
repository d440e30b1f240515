"""`OTOSettings`: every OTO setting in one typed object, checked once.

`OTOTrainingArguments` builds one from its `oto_*` fields (`args.oto_settings`) and `HSPG` builds one from its
keywords (or is given one): both refuse bad settings through the same `__post_init__`, which lists every problem
in one message, naming each setting as the caller spelled it (`--oto_lambda` for the trainer, `lmbda` for HSPG).

One name per quantity. The one quantity that changes units on its way is the pruning schedule: the trainer knows it
as fractions of training (`half_space_start_fraction`, `prune_fraction`: the number of steps is not known before
training starts), HSPG acts on optimizer steps (`half_space_start_step`, `prune_steps`); `in_steps(max_steps)` turns
the first into the second.
"""

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal, get_args

import torch

from .groups import ZeroInvariantGroups
from .selection import LAYOUTS, SALIENCIES as SALIENCY_CLASSES, LayerFloor, Layout, Saliency, SelectionPolicy


Direction = Literal["adamw", "sgd"]
TargetUnit = Literal["flops", "params"]
SaliencyName = Literal["taylor", "fisher", "magnitude", "mixed"]
AllocationName = Literal["uniform", "balanced", "latency"]
Runtime = Literal["torch", "onnxruntime", "cuda"]

DIRECTIONS: tuple[str, ...] = get_args(Direction)
TARGET_UNITS: tuple[str, ...] = get_args(TargetUnit)
SALIENCIES: tuple[str, ...] = get_args(SaliencyName)
ALLOCATIONS: tuple[str, ...] = get_args(AllocationName)
RUNTIMES: tuple[str, ...] = get_args(Runtime)

_STILL_RUNS = "commit 9a312b9 still runs it (docs/experiments.md)"

# Options the evidence retired (docs/experiments.md), by command-line name without dashes: what to tell a user who
# still passes one. The job runner checks the command line and YAML files against it; OTOTrainingArguments and HSPG
# check their own keywords.
RETIRED_OPTIONS: dict[str, str] = {
    "oto_hold_lr_through_window": (
        "--oto_hold_lr_through_window was retired in oto_hf 0.3: holding the peak learning rate through the pruning "
        f"window gave no gain over the linear schedule. Drop it (--lr_scheduler_type applies); {_STILL_RUNS}."
    ),
    "oto_saliency_zero_init": (
        "--oto_saliency_zero_init was retired in oto_hf 0.3: the saliency average always starts at zero (starting "
        "it at the first step's score let one batch scored through a random task head decide the first choice, and "
        f"cost quality). Drop it; {_STILL_RUNS}."
    ),
}

# Choices the evidence retired, by setting: what to tell a user who still passes one.
RETIRED_CHOICES: dict[str, dict[str, str]] = {
    "allocation": {
        "global": (
            "was retired in oto_hf 0.3: one ranking by saliency per unit of cost compares the "
            "scores of heads and neurons, which are not on a common scale, and removes far more of one kind. Use "
            f"'uniform' (the default) or 'balanced'; {_STILL_RUNS}."
        ),
    },
}


class InvalidOTOSettings(ValueError):
    """Bad OTO settings; `problems` lists each one (the message shows them all)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("Invalid OTO settings:\n  - " + "\n  - ".join(problems))


def _option(name: str, help: str, default=None):
    """A field with its command-line option (`OTOTrainingArguments`' field, with dashes) in its metadata."""
    return field(default=default, metadata={"option": name, "help": help})


@dataclass
class OTOSettings:
    """The OTO settings (see each field's help; the defaults are HSPG's, `OTOTrainingArguments` has the trainer's).

    The schedule is given either in optimizer steps (`half_space_start_step`, `prune_steps`: HSPG) or as fractions of
    training (`half_space_start_fraction`, `prune_fraction`: the trainer, before the number of steps is known), not
    both. `named_as` says how messages name the settings: "keywords" (HSPG's) or "options" (the command line's).
    """

    target: float | None = _option("--oto_target", "fraction in [0, 1) of encoder FLOPs (or parameters) to remove; "
                                   "None for the paper's λ-only mode")
    target_unit: TargetUnit = _option("--oto_target_unit", "what `target` counts: 'flops' or 'params'", "flops")
    speedup: float | None = _option("--oto_speedup", "instead of `target`: the measured speedup (> 1) of the whole "
                                    "forward pass over the dense model, on `latency_runtime` at `latency_shape`")
    latency_runtime: Runtime = _option("--oto_latency_runtime", "where `speedup` is measured: 'torch' (CPU), "
                                       "'onnxruntime' (CPU) or 'cuda'", "torch")
    latency_shape: str = _option("--oto_latency_shape", "batch x tokens at which `speedup` holds, e.g. '1x128'",
                                 "1x128")
    latency_threads: int | None = _option("--oto_latency_threads", "CPU threads `speedup` holds for (None: the "
                                          "process's torch threads)")
    seq_len: int | None = _option("--oto_seq_len", "tokens at which FLOPs are counted (None: the groups' own)")
    lmbda: float = _option("--oto_lambda", "λ ≥ 0, the group-lasso strength", 1e-3)
    epsilon: float = _option("--oto_epsilon", "ε in [0, 1) of the half-space projection", 0.0)
    half_space_start_step: int | None = _option(
        "--oto_half_space_start", "the optimizer step at which stage 2 (and the pruning window) starts", 0)
    prune_steps: int | None = _option("--oto_prune_fraction", "with a target: the pruning window's length in steps")
    half_space_start_fraction: float | None = _option(
        "--oto_half_space_start", "when stage 2 starts, as a fraction of the training steps")
    prune_fraction: float | None = _option(
        "--oto_prune_fraction", "with a target: the pruning window's length, as a fraction of the training steps")
    num_periods: int = _option("--oto_num_periods", "with a target: the removed share grows in this many periods", 1)
    direction: Direction = _option("--oto_direction", "HSPG's base direction: 'adamw' or 'sgd'", "adamw")
    momentum: float = _option("--oto_momentum", "momentum of the 'sgd' direction", 0.0)
    saliency: SaliencyName | Saliency = _option(
        "--oto_saliency", "how groups are scored for removal (a name, or an oto_hf.selection.Saliency)", "taylor")
    allocation: AllocationName | Layout | None = _option(
        "--oto_allocation", "how the target is shared out (a name, or an oto_hf.selection.Layout; None: 'latency' "
        "with a speedup and the hidden width whole, else 'uniform')")
    layer_floor: float = _option("--oto_layer_floor", "the fraction of each layer's groups of each kind kept", 0.25)
    taylor_decay: float = _option("taylor_decay (HSPG only)", "decay per step of the saliency's running averages", 0.99)
    prune_heads: bool = _option("--oto_prune_heads", "prune whole attention heads", True)
    prune_neurons: bool = _option("--oto_prune_neurons", "prune FFN neurons", True)
    prune_hidden: bool = _option("--oto_prune_hidden", "prune channels of the residual stream (the hidden width)",
                                 False)
    named_as: Literal["keywords", "options"] = field(default="keywords", compare=False, repr=False)

    def __post_init__(self):
        if self.allocation is None:
            self.allocation = "latency" if self.speedup is not None and not self.prune_hidden else "uniform"
        problems = self.problems()
        if problems:
            raise InvalidOTOSettings(problems)

    # ---- the one check ----

    def problems(self) -> list[str]:
        """Every problem with these settings, each saying what is wrong and what to do (empty when they are fine)."""
        problems = []

        def bad(name: str, message: str) -> None:
            problems.append(f"{self.name_of(name)} {message}")

        for name, choices in (("target_unit", TARGET_UNITS), ("direction", DIRECTIONS), ("saliency", SALIENCIES),
                              ("allocation", ALLOCATIONS)):
            value = getattr(self, name)
            if isinstance(value, (Saliency, Layout)):
                continue  # an object of the policy's own: it needs no name
            if value in RETIRED_CHOICES.get(name, {}):
                problems.append(f"{self.name_of(name)} {value!r} {RETIRED_CHOICES[name][value]}")
            elif value not in choices:
                bad(name, f"must be one of {choices}, got {value!r}")
        if self.target is not None and not 0 <= self.target < 1:
            bad("target", f"must lie in [0, 1) (the fraction of encoder {self.target_unit} to remove), got {self.target}")
        problems += self._speed_problems()
        if not self.lmbda >= 0:
            bad("lmbda", f"(λ) must be ≥ 0, got {self.lmbda}: it is the strength of the group penalty")
        if not 0 <= self.epsilon < 1:
            bad("epsilon", f"(ε) must lie in [0, 1), got {self.epsilon}: 0 is the paper's most cautious projection")
        if not 0 <= self.layer_floor < 1:
            bad("layer_floor", f"must lie in [0, 1) (the fraction of each layer's heads and neurons kept at least), "
                f"got {self.layer_floor}")
        if not 0 <= self.momentum < 1:
            bad("momentum", f"must lie in [0, 1), got {self.momentum}")
        if not 0 <= self.taylor_decay < 1:
            bad("taylor_decay", f"must lie in [0, 1), got {self.taylor_decay}")
        if not (self.prune_heads or self.prune_neurons or self.prune_hidden):
            problems.append(f"{self.name_of('prune_heads')} and {self.name_of('prune_neurons')} are both off: "
                            "nothing would be pruned")
        problems += self._schedule_problems()
        return problems

    def _speed_problems(self) -> list[str]:
        from .latency import runtime_problem
        from .timing import parse_shape

        problems = []
        if self.latency_runtime not in RUNTIMES:
            problems.append(f"{self.name_of('latency_runtime')} must be one of {RUNTIMES}, got "
                            f"{self.latency_runtime!r}")
        try:
            parse_shape(self.latency_shape, self.name_of("latency_shape"))
        except ValueError as error:
            problems.append(str(error))
        if self.latency_threads is not None and self.latency_threads < 1:
            problems.append(f"{self.name_of('latency_threads')} must be ≥ 1, got {self.latency_threads}")
        if self.allocation == "latency" and self.speedup is None:
            problems.append(f"{self.name_of('allocation')} 'latency' spends a speed target: set "
                            f"{self.name_of('speedup')}, or use 'uniform' or 'balanced' with "
                            f"{self.name_of('target')}")
        if self.speedup is None:
            return problems
        if not self.speedup > 1:
            problems.append(f"{self.name_of('speedup')} must be > 1 (how many times faster than the dense model), "
                            f"got {self.speedup}")
        if self.target is not None:
            problems.append(f"{self.name_of('speedup')} and {self.name_of('target')} are two targets: give one")
        if self.prune_hidden and self.allocation == "latency":
            problems.append(f"{self.name_of('allocation')} 'latency' does not plan the hidden width: with "
                            f"{self.name_of('prune_hidden')} and {self.name_of('speedup')} use 'uniform' (the default "
                            "there) or 'balanced'")
        if self.latency_runtime in RUNTIMES:
            problem = runtime_problem(self.latency_runtime)
            if problem:
                problems.append(f"{self.name_of('latency_runtime')} {problem}")
        return problems

    def _schedule_problems(self) -> list[str]:
        in_steps, in_fractions = self.half_space_start_step is not None, self.half_space_start_fraction is not None
        if in_steps == in_fractions:
            return ["the schedule must be given either in steps (half_space_start_step, prune_steps) or as fractions "
                    "of training (half_space_start_fraction, prune_fraction), not both or neither"]
        problems = []
        if in_fractions:
            start = self.half_space_start_fraction
            if not 0 <= start < 1:
                problems.append(f"{self.name_of('half_space_start_fraction')} is a fraction of the training in "
                                f"[0, 1), got {start}")
            if self.has_target:
                if self.prune_fraction is None or not 0 < self.prune_fraction <= 1 - start:
                    problems.append(f"{self.name_of('prune_fraction')} must lie in (0, 1 - {self.name_of('half_space_start_fraction')} "
                                    f"= {1 - start:g}] so that the pruning window ends inside training, got "
                                    f"{self.prune_fraction}")
                if self.num_periods < 1:
                    problems.append(f"{self.name_of('num_periods')} must be ≥ 1, got {self.num_periods}")
            return problems
        if self.half_space_start_step < 0:
            problems.append(f"{self.name_of('half_space_start_step')} must be ≥ 0, got {self.half_space_start_step}")
        if self.has_target:
            if self.prune_steps is None or self.prune_steps < 1:
                problems.append(f"with a target, {self.name_of('prune_steps')} (the length of the pruning window) "
                                f"must be ≥ 1, got {self.prune_steps}")
            elif not 1 <= self.num_periods <= self.prune_steps:
                problems.append(f"{self.name_of('num_periods')} must lie in [1, prune_steps={self.prune_steps}], got "
                                f"{self.num_periods}")
        return problems

    def name_of(self, name: str) -> str:
        """How the caller spelled the setting `name`: its command-line option or its keyword."""
        if self.named_as == "options":
            return next(f.metadata["option"] for f in fields(self) if f.name == name)
        return name

    def check_target_fits(self, groups: ZeroInvariantGroups) -> None:
        """Refuse a target larger than what the prunable `groups` hold (the rest of the encoder is never pruned)."""
        if self.target is None:
            return
        removable = 1 - groups.kept_cost(torch.zeros(groups.num_groups, dtype=torch.bool), self.target_unit,
                                         self.seq_len) / groups.total_cost(self.target_unit, self.seq_len)
        if self.target > removable + 1e-9:
            raise InvalidOTOSettings([
                f"{self.name_of('target')} {self.target} asks to remove {self.target:.0%} of the encoder "
                f"{self.target_unit}, but the prunable groups hold only {removable:.1%} of them (the rest is never "
                "pruned). Lower the target or prune both heads and FFN neurons."])

    def check_speedup_fits(self, table, groups: ZeroInvariantGroups) -> None:
        """Refuse a `speedup` beyond what emptying every prunable group gives, as the latency `table` predicts it,
        naming the largest one reachable (the embeddings, LayerNorms and task head are never pruned)."""
        if self.speedup is None:
            return
        reachable = table.budget(groups, self.speedup).largest_speedup
        if self.speedup > reachable:
            raise InvalidOTOSettings([
                f"{self.name_of('speedup')} {self.speedup:g} cannot be reached on {self.latency_runtime} at "
                f"{self.latency_shape}: with every prunable group removed the model is predicted "
                f"{reachable:.2f}× faster (the embeddings, LayerNorms and task head stay). Ask for at most "
                f"{math.floor(reachable * 100) / 100:g}."])

    def selection_policy(self) -> SelectionPolicy:
        """The saliency, layout and floor these settings name (objects passed as settings are used as they are)."""
        saliency = self.saliency if isinstance(self.saliency, Saliency) else SALIENCY_CLASSES[self.saliency](
            self.taylor_decay)
        layout = self.allocation if isinstance(self.allocation, Layout) else LAYOUTS[self.allocation]()
        return SelectionPolicy(saliency=saliency, layout=layout, floor=LayerFloor(self.layer_floor))

    # ---- the schedule in steps ----

    def in_steps(self, max_steps: int) -> "OTOSettings":
        """These settings with the schedule turned from fractions of `max_steps` into optimizer steps. The window
        always ends inside training (rounding the two fractions separately must not push it past the last step),
        and there are never more periods than window steps."""
        if self.half_space_start_fraction is None:
            return self
        max_steps = max(1, max_steps)
        start = int(round(self.half_space_start_fraction * max_steps))
        prune_steps = max(1, int(round((self.prune_fraction or 0.0) * max_steps)))
        if self.has_target:
            start = min(start, max_steps - 1)
            prune_steps = min(prune_steps, max_steps - start)
        return replace(self, half_space_start_fraction=None, prune_fraction=None, half_space_start_step=start,
                       prune_steps=prune_steps if self.has_target else None,
                       num_periods=min(self.num_periods, prune_steps))

    @property
    def window_end_step(self) -> int | None:
        """The optimizer step at which the pruning window closes (target met, zero set frozen from then on); None
        without a target or before the schedule is in steps."""
        if not self.has_target or self.prune_steps is None:
            return None
        return self.half_space_start_step + self.prune_steps

    @property
    def has_target(self) -> bool:
        """Whether the target mode runs: a cost `target` or a `speedup` (None of both: the paper's λ-only mode)."""
        return self.target is not None or self.speedup is not None

    def latency_spec(self):
        """The `oto_hf.latency.LatencySpec` a speed target holds for (the runtime is checked to be usable here)."""
        from .latency import LatencySpec

        return LatencySpec.of(self.latency_runtime, self.latency_shape, self.latency_threads)


__all__ = ["ALLOCATIONS", "DIRECTIONS", "InvalidOTOSettings", "OTOSettings", "RETIRED_CHOICES", "RETIRED_OPTIONS",
           "RUNTIMES", "SALIENCIES", "TARGET_UNITS"]
