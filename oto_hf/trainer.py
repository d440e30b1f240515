"""`OTOTrainer`: a drop-in `transformers.Trainer` that trains with HSPG, prunes, resumes and publishes the compressed
model. Change `Trainer` → `OTOTrainer` and `TrainingArguments` → `OTOTrainingArguments`; everything else (data,
collators, schedulers, callbacks, evaluation, checkpoints, the Hub) works as before.
"""

import inspect
import math
import os
import re
import shutil
import warnings
from dataclasses import InitVar, dataclass, field

from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, IntervalStrategy
from transformers.utils import logging
from transformers.training_args import OptimizerNames

from .checkpoints import (ResumeError, checkpoint_problem, last_complete_checkpoint, run_differences,
                          run_identity, write_failure, write_run_identity)
from .compress import compress
from .distillation import DistillationMixin
from .groups import zero_invariant_groups
from .hspg import HSPG
from .latency import STREAM_POINTS, measure_latency_table
from .model_card import CardInfo, card_arguments_evaluations, hub_id, licence_of, model_card
from .settings import (DIRECTIONS, RETIRED_OPTIONS, RUNTIMES, SALIENCIES, TARGET_UNITS, InvalidOTOSettings,
                       OTOSettings)
from .stats import model_stats


logger = logging.get_logger(__name__)

_DEFAULT_TARGET = 0.5
_DEFAULT_OPTIMS = {OptimizerNames.ADAMW_TORCH, OptimizerNames.ADAMW_TORCH_FUSED}


@dataclass
class OTOTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the OTO settings (all prefixed `oto_`). The defaults prune 50% of the encoder FLOPs
    of a fine-tuning run without further tuning: pruning starts after 10% of the steps, the target grows in 4
    equal periods over the next 50%, and the last 40% train the pruned model."""

    oto_target: float | None = field(
        default=_DEFAULT_TARGET,
        metadata={"help": "Fraction in [0, 1) of the encoder (see --oto_target_unit) to remove "
                  "(None in Python/YAML, or --oto_lambda_only on the command line, for no target)."},
    )
    oto_lambda_only: bool = field(
        default=False,
        metadata={"help": "Run the paper's λ-only HSPG without a target: how much is pruned then follows "
                  "--oto_lambda and --oto_epsilon."},
    )
    oto_target_unit: str = field(
        default="flops",
        metadata={"help": "What --oto_target counts: 'flops' (encoder FLOPs per example at --oto_seq_len tokens) "
                  "or 'params' (encoder parameters).", "choices": list(TARGET_UNITS)},
    )
    oto_seq_len: int | None = field(
        default=None,
        metadata={"help": "Sequence length at which FLOPs are counted (default: 384 for text models, the number of "
                  "patches + class token for vision models). Set it to the length the model will serve."},
    )
    oto_speedup: float | None = field(
        default=None,
        metadata={"help": "A speed target instead of --oto_target: the compressed model's whole forward pass runs "
                  "this many times (> 1) faster than the dense one, measured on --oto_latency_runtime at "
                  "--oto_latency_shape. Before training, a latency table of the model is measured there (about 20 "
                  "models timed; cached on disk, keyed by model, runtime, shape, threads and CPU) and the layout is "
                  "chosen by it."},
    )
    oto_latency_runtime: str = field(
        default="torch",
        metadata={"help": "Where --oto_speedup holds: 'torch' (CPU), 'onnxruntime' (CPU, the file oto_hf.export "
                  "writes, with its fastest session settings) or 'cuda'. Use the runtime you serve with.",
                  "choices": list(RUNTIMES)},
    )
    oto_latency_shape: str = field(
        default="1x128",
        metadata={"help": "Batch x tokens at which --oto_speedup holds, e.g. 1x128 (one request of 128 tokens) or "
                  "32x128. Use the shape you serve."},
    )
    oto_latency_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads at which --oto_speedup holds (default: this process's torch threads). Use "
                  "the threads you serve with."},
    )
    oto_lambda: float = field(
        default=1e-3, metadata={"help": "λ ≥ 0, group-lasso strength (norm removed per unit of learning rate)."}
    )
    oto_epsilon: float = field(
        default=0.0, metadata={"help": "ε in [0, 1) of the half-space projection; larger projects more aggressively."}
    )
    oto_half_space_start: float = field(
        default=0.1,
        metadata={"help": "When stage 2 (projection, and the pruning window with a target) starts, as a fraction "
                  "of the training steps."},
    )
    oto_prune_fraction: float = field(
        default=0.5,
        metadata={"help": "With a target: length of the pruning window as a fraction of the training steps. "
                  "The steps after it train the pruned model (its zero set is frozen)."},
    )
    oto_num_periods: int = field(
        default=4, metadata={"help": "With a target: the removed share grows in this many equal periods."}
    )
    oto_direction: str = field(
        default="adamw",
        metadata={"help": "Base direction of HSPG: 'adamw' (uses --adam_beta1/2, --adam_epsilon, --weight_decay) "
                  "or 'sgd' (uses --oto_momentum).", "choices": list(DIRECTIONS)},
    )
    oto_momentum: float = field(default=0.9, metadata={"help": "Momentum of the 'sgd' direction."})
    oto_saliency: str = field(
        default="taylor",
        metadata={"help": "How groups are scored when the target mode picks what to remove: 'taylor' (|x_g·grad_g|), "
                  "'fisher' ((x_g·grad_g)^2), 'magnitude' or 'mixed' (HESSO's equal-weight mix of magnitude, direction "
                  "and both Taylor orders).", "choices": list(SALIENCIES)},
    )
    oto_allocation: str | None = field(
        default=None,
        # No argparse "choices": a retired choice ('global') gets OTOSettings' message saying what to use instead.
        metadata={"help": "How the target is shared between heads and FFN neurons: 'uniform' (the default with "
                  "--oto_target: every layer removes the target's fraction of its cost, the nearest whole number of "
                  "heads and neurons for the rest; only which ones go is learned), 'balanced' (heads and neurons "
                  "each remove that fraction of their cost, layers ranked against each other) or 'latency' (the "
                  "default with --oto_speedup: the least saliency lost per measured second saved, blocks may be "
                  "emptied). With --oto_speedup, 'uniform' and 'balanced' are given the FLOPs share that the latency "
                  "table predicts meets the speedup."},
    )
    oto_layer_floor: float = field(
        default=0.25,
        metadata={"help": "With a target, every layer keeps at least this fraction of its heads and of its FFN "
                  "neurons (capped at 1 - oto_target), so that 'balanced' cannot empty a layer. 0: no floor. With "
                  "--oto_allocation latency, a block keeps at least this fraction or is emptied altogether."},
    )
    oto_prune_heads: bool = field(default=True, metadata={"help": "Prune whole attention heads."})
    oto_prune_neurons: bool = field(default=True, metadata={"help": "Prune FFN neurons."})
    oto_prune_hidden: bool = field(
        default=False,
        metadata={"help": "Also prune channels of the residual stream (the hidden width: embeddings, every norm and "
                  "projection on it, the task head's input), each channel one group, shared with the heads and "
                  "neurons by the target; the stream's LayerNorms then count only its live channels, as the "
                  "compressed model's do. With a parameter target the whole model's parameters count. Off by default; "
                  "every supported family (a DeBERTa-v2 with a convolution layer is refused); not with --oto_speedup "
                  "yet."},
    )
    oto_save_group_sparse: bool = field(
        default=False,
        metadata={"help": "`save_model` also writes the full-size group-sparse model to <output_dir>/group_sparse."},
    )

    # Retired options (RETIRED_OPTIONS): accepted only to say so. Asking for the behaviour that stays warns, asking
    # for the retired one fails.
    oto_hold_lr_through_window: InitVar[bool | None] = None
    oto_saliency_zero_init: InitVar[bool | None] = None

    @property
    def oto_settings(self) -> OTOSettings:
        """The OTO settings as one checked `OTOSettings`, schedule in fractions of training (`.in_steps(n)` for
        HSPG). Built from the fields each time, so that a field changed after construction is seen."""
        return OTOSettings(
            target=self.oto_cost_target, target_unit=self.oto_target_unit, speedup=self.oto_speedup,
            latency_runtime=self.oto_latency_runtime, latency_shape=self.oto_latency_shape,
            latency_threads=self.oto_latency_threads, seq_len=self.oto_seq_len, lmbda=self.oto_lambda,
            epsilon=self.oto_epsilon, half_space_start_step=None,
            half_space_start_fraction=self.oto_half_space_start, prune_fraction=self.oto_prune_fraction,
            num_periods=self.oto_num_periods, direction=self.oto_direction,
            momentum=self.oto_momentum if self.oto_direction == "sgd" else 0.0, saliency=self.oto_saliency,
            allocation=self.oto_allocation, layer_floor=self.oto_layer_floor, prune_heads=self.oto_prune_heads,
            prune_neurons=self.oto_prune_neurons, prune_hidden=self.oto_prune_hidden, named_as="options",
        )

    @property
    def oto_cost_target(self) -> float | None:
        """--oto_target, or None with --oto_lambda_only, or with --oto_speedup (which replaces the default target;
        another --oto_target beside it is refused as a second target)."""
        if self.oto_lambda_only:
            return None
        if self.oto_speedup is not None and self.oto_target == _DEFAULT_TARGET:
            return None
        return self.oto_target

    def oto_options(self) -> dict:
        """The `oto_*` options as given (what the report, the model card and each checkpoint's run record state)."""
        return {k: v for k, v in self.to_dict().items() if k.startswith("oto_")}

    @property
    def oto_effective_target(self) -> float | None:
        """Deprecated: `oto_settings.target` (the target, None with --oto_lambda_only)."""
        warnings.warn("OTOTrainingArguments.oto_effective_target is deprecated: use oto_settings.target.",
                      DeprecationWarning, stacklevel=2)
        return None if self.oto_lambda_only else self.oto_target

    def __post_init__(self, oto_hold_lr_through_window: bool | None, oto_saliency_zero_init: bool | None):
        super().__post_init__()
        problems = []
        for name, value, keeps in (("oto_hold_lr_through_window", oto_hold_lr_through_window, False),
                                   ("oto_saliency_zero_init", oto_saliency_zero_init, True)):
            if value is not None and value != keeps:
                problems.append(RETIRED_OPTIONS[name])
            elif value is not None:
                warnings.warn(RETIRED_OPTIONS[name], DeprecationWarning, stacklevel=3)
        try:
            target = self.oto_settings.target
        except InvalidOTOSettings as invalid:
            problems += invalid.problems
            target = self.oto_cost_target
        if self.optim not in _DEFAULT_OPTIMS:
            problems.append(
                f"--optim {self.optim.value if hasattr(self.optim, 'value') else self.optim} cannot be combined with OTO: "
                "the optimizer is always HSPG; choose its direction with --oto_direction adamw|sgd"
            )
        if self.push_to_hub and HubStrategy(self.hub_strategy) != HubStrategy.END:
            problems.append(
                f"--hub_strategy {HubStrategy(self.hub_strategy).value} pushes each checkpoint's full-size "
                "group-sparse model as the repository's model while training; OTOTrainer publishes the compressed "
                "model when training ends: use --hub_strategy end (the default)"
            )
        if self.push_to_hub and self.oto_save_group_sparse:
            problems.append("--oto_save_group_sparse writes a full-size copy into --output_dir, which push_to_hub would "
                            "upload beside the compressed model: drop one of the two")
        if self.oto_save_group_sparse and self.oto_prune_hidden:
            problems.append("--oto_save_group_sparse cannot be combined with --oto_prune_hidden: the full-width copy "
                            "loads with stock LayerNorms over every channel, zero ones included, which is not the "
                            "trained function (that needs its norms over the live channels only, "
                            "oto_hf.zero_invariant_groups(model, prune_hidden=True).track_live_width()). Keep the "
                            "compressed model, or the Trainer checkpoints, which resume it")
        if self.load_best_model_at_end and target is None and self.oto_speedup is None:
            problems.append(
                "--load_best_model_at_end cannot be combined with --oto_lambda_only (no target): without a target "
                "there is no pruning window after which the architecture is fixed, every later checkpoint is sparser, "
                "so the best-scoring checkpoint is usually an earlier, less pruned model. Set --oto_target (then only "
                "checkpoints evaluated after its pruning window can be chosen), or drop --load_best_model_at_end and "
                "keep the final model"
            )
        if self.fsdp or self.deepspeed:
            problems.append(
                "FSDP and DeepSpeed shard parameters across ranks, but HSPG needs every group whole on each rank to "
                "decide projections; use DDP (torchrun / accelerate launch without FSDP/DeepSpeed)"
            )
        if problems:
            raise InvalidOTOSettings(problems)


_NO_MODEL_INIT = (
    "OTOTrainer does not take model_init, and so cannot run hyperparameter_search: its zero-invariant groups and "
    "HSPG state are built once, for the one model it is given, while Trainer would build a new model for each run "
    "or trial. Pass model=... instead; to search hyperparameters, loop over the settings and construct one "
    "OTOTrainer per trial, each with a freshly loaded model and its own OTOTrainingArguments."
)
# Where model_init sits among Trainer.__init__'s positional parameters after (model, args).
_MODEL_INIT_POSITION = list(inspect.signature(Trainer.__init__).parameters)[3:].index("model_init")


class OTOTrainer(DistillationMixin, Trainer):
    """A `Trainer` whose optimizer is HSPG over the model's zero-invariant groups.

    * `teacher_model=` (with `distillation_alpha=`, `distillation_temperature=`) adds a distillation term from a
      trained dense model to the task loss; see `oto_hf.distillation`.

    * `trainer.compress()` returns the compressed model at any time (the trained model is left untouched; cut once
      per state of the weights).
    * `save_model()` (and so the end of `run_squad.py`, `push_to_hub()`) writes the compressed model with a model card;
      checkpoints written during training keep the full-size group-sparse model, so that `resume_from_checkpoint`
      restores model, HSPG state and schedule exactly. `create_model_card` / `push_to_hub` take transformers' card
      arguments (`finetuned_from`, `tasks`, `dataset_tags`, `dataset`, `dataset_args`, `language`, `license`,
      `tags`, `model_name`) and write them into the compressed model's card; `trainer.card_info`
      (`oto_hf.model_card.CardInfo`) adds what a script measured itself (evaluations, speedup).
    * Each log entry, training and evaluation alike, reports group sparsity, heads and FFN neurons kept, encoder
      FLOPs and parameters kept and λ (`oto/*`).

    With a target, the pruning window is the optimizer steps [half_space_start, half_space_start + prune_steps);
    once they are done the target is met and the zero set is frozen ("the window has closed").

    * Best model (`metric_for_best_model`, `load_best_model_at_end`): only evaluations made after the window has
      closed can become the best (`state.best_metric`, `best_global_step`, `best_model_checkpoint`); earlier ones
      are logged but never compared, so the model loaded at the end meets the target. `load_best_model_at_end` is
      refused without a target, and at train start when no evaluation can fall after the window.
    * Early stopping (`EarlyStoppingCallback`, or any callback that stops training when an evaluation's results
      arrive): a stop requested during an evaluation before the window has closed is cancelled, whatever the order
      of the callbacks, and since those evaluations set no best metric they do not count toward the patience either.
      Counting starts with the first evaluation after the window. A stop requested at another event (a time budget
      in `on_step_end`, say) is honoured.
    * `model_init` and `hyperparameter_search` are refused: the groups and HSPG state belong to one model.
    """

    def __init__(self, model=None, args: OTOTrainingArguments | None = None, *posargs, **kwargs):
        if args is None:
            raise ValueError("OTOTrainer needs OTOTrainingArguments (the OTO settings live there).")
        if not isinstance(args, OTOTrainingArguments):
            raise TypeError(
                f"OTOTrainer needs OTOTrainingArguments, got {type(args).__name__}: replace TrainingArguments by "
                "oto_hf.OTOTrainingArguments (same fields, plus the oto_* settings)."
            )
        model_init = kwargs.get("model_init")
        if model_init is None and len(posargs) > _MODEL_INIT_POSITION:
            model_init = posargs[_MODEL_INIT_POSITION]
        if model_init is not None:
            raise ValueError(_NO_MODEL_INIT)
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers[0] is not None or kwargs.get("optimizer_cls_and_kwargs") is not None:
            raise ValueError(
                "OTOTrainer builds its own optimizer (HSPG over the model's zero-invariant groups), so it cannot take "
                "`optimizers=(optimizer, ...)` or `optimizer_cls_and_kwargs`. Set the OTO arguments instead; a "
                "scheduler alone can still be passed as `optimizers=(None, scheduler)`."
            )
        if model is None:
            raise ValueError("OTOTrainer needs a model (model_init is not supported: groups are built once).")
        # Build the groups (and so refuse an unsupported model or an impossible target) before any other set-up.
        settings = args.oto_settings
        self.oto_groups = zero_invariant_groups(model, prune_heads=args.oto_prune_heads,
                                                prune_neurons=args.oto_prune_neurons,
                                                prune_hidden=args.oto_prune_hidden)
        settings.check_target_fits(self.oto_groups)
        # A speed target: the latency table is measured (or read from the cache) now, so that a speedup the model
        # cannot reach is refused before training.
        self.oto_latency_table = None
        if settings.speedup is not None:
            # One process per machine measures (timing on every rank at once would measure the contention); the
            # others read its table from the cache.
            with args.main_process_first(desc="the latency table"):
                self.oto_latency_table = measure_latency_table(
                    model, settings.latency_spec(), stream_points=STREAM_POINTS if settings.prune_hidden else 0,
                    log=logger.info)
            settings.check_speedup_fits(self.oto_latency_table, self.oto_groups)
        self._saving_checkpoint = False
        # What the model card states beyond the run itself (see write_model_card); job scripts fill it.
        self.card_info = CardInfo()
        self._compressed = None  # (fingerprint of the trained weights, their compressed model): see compress()
        super().__init__(model, args, *posargs, **kwargs)
        # First in the list, so that its check runs before any other callback starts anything at train start.
        self.callback_handler.callbacks.insert(0, _OTOTrainStartCheck())
        mean_loss_under_gradient_accumulation(self)

    def hyperparameter_search(self, *args, **kwargs):
        raise ValueError(_NO_MODEL_INIT)

    # ---- optimizer ----

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        args = self.args
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        params = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        grouped_parameters = [
            {"params": [p for n, p in params if n in decay], "weight_decay": args.weight_decay},
            {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
        ]
        # The schedule's fractions become optimizer steps now that the number of steps is known.
        settings = args.oto_settings.in_steps(self.state.max_steps or args.max_steps or 1)
        _warn_if_the_window_collapsed(args.oto_settings, settings)
        self.optimizer = HSPG(grouped_parameters, self.oto_groups, lr=args.learning_rate, settings=settings,
                              latency_table=self.oto_latency_table,
                              betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                              weight_decay=args.weight_decay)
        return self.optimizer

    @property
    def hspg(self) -> HSPG | None:
        """The HSPG optimizer itself (the Trainer wraps it once training has started)."""
        return _unwrap_hspg(self.optimizer)

    @property
    def oto_window_end(self) -> int | None:
        """The optimizer step at which the pruning window closes (target met, zero set frozen from then on); None
        without a target, or before training has built the optimizer."""
        return _window_end(self.hspg)

    def oto_window_closed(self) -> bool:
        """Whether the model now meets the target and keeps its zero set: the optimizer has taken every step of the
        pruning window (always true without a target, false before training with one)."""
        if not self.args.oto_settings.has_target:
            return True
        hspg = self.hspg
        return hspg is not None and hspg.step_count >= _window_end(hspg)

    # ---- logging, evaluation, best model ----

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # Every entry, evaluations included; a copy, so that the metrics evaluate() returns stay the metrics.
        hspg = self.hspg
        if hspg is not None:
            logs = {**logs, **{f"oto/{k}": v for k, v in hspg.sparsity_report().items()}}
        super().log(logs, *args, **kwargs)

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        stopped_before = self.control.should_training_stop
        metrics = super().evaluate(*args, **kwargs)
        # A stop asked for by a callback seeing these results (EarlyStoppingCallback) is cancelled until the pruning
        # window has closed: stopping earlier would leave a model short of the target. Acting here, after every
        # callback's on_evaluate, makes the order of the callbacks irrelevant.
        if (self.control.should_training_stop and not stopped_before and self.hspg is not None
                and not self.oto_window_closed()):
            logger.info(
                f"An evaluation at step {self.state.global_step} asked training to stop; OTOTrainer continues until "
                f"the pruning window closes at step {self.oto_window_end} (the target is not met before)."
            )
            self.control.should_training_stop = False
        return metrics

    def _determine_best_metric(self, metrics: dict[str, float], trial) -> bool:
        # Only a model that meets the target can be the best: evaluations inside or before the pruning window are
        # not compared (state.best_metric stays as it was, so EarlyStoppingCallback does not count them either).
        if not self.oto_window_closed():
            return False
        return super()._determine_best_metric(metrics, trial)

    # ---- compression, saving, the Hub ----

    def compress(self, refresh: bool = False):
        """The compressed model: the trained model without its zero heads and FFN neurons (the trained model is left
        untouched). Cut once per state of the weights: until a training step, a loaded checkpoint or any in-place
        write to a parameter changes them, the same compressed model is returned, so a job that evaluates it and then
        saves it cuts the model once. Writes through `param.data` bypass torch's version counters: after those, pass
        `refresh=True`."""
        model = self.accelerator.unwrap_model(self.model)
        # Every in-place write to a parameter (optimizer steps, load_state_dict) bumps its version counter; the step
        # count covers HSPG's masked writes through `.data`, which do not.
        fingerprint = (self.state.global_step, tuple((id(p), p._version) for p in model.parameters()))
        if refresh or self._compressed is None or self._compressed[0] != fingerprint:
            self._compressed = (fingerprint, compress(model, seq_len_for_stats=self.args.oto_seq_len))
        return self._compressed[1]

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` resumes from the last *complete* checkpoint in `output_dir`
        (one whose writing was interrupted is skipped with a warning). A checkpoint that cannot be resumed from, or
        that a run with other settings wrote, is refused with `checkpoints.ResumeError` (a ValueError) before any
        step."""
        needs_optimizer = not self.args.save_only_model
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, needs_optimizer)
            if resume_from_checkpoint is None:
                raise ResumeError(f"resume_from_checkpoint=True, but {self.args.output_dir} holds no complete "
                                 "checkpoint to resume from")
        elif resume_from_checkpoint:
            problem = checkpoint_problem(resume_from_checkpoint, needs_optimizer)
            if problem:
                raise ResumeError(f"Cannot resume from {resume_from_checkpoint}: {problem}. Resume from an earlier "
                                 "checkpoint, or start fresh without resume_from_checkpoint")
        if resume_from_checkpoint:
            # A resumed run continues the checkpoint's pruning: settings that differ would be ignored, and reported.
            differences = run_differences(resume_from_checkpoint, self._run_identity())
            if differences:
                raise ResumeError(
                    f"{resume_from_checkpoint} was written by a run with other settings, which resuming it would keep "
                    "while reporting the new ones:\n  - " + "\n  - ".join(differences) + "\nStart fresh instead (another "
                    "output_dir, or --overwrite_output_dir true in the job scripts), or resume with the checkpoint's "
                    "settings.")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _run_identity(self) -> dict:
        return run_identity(self.args, self.accelerator.unwrap_model(self.model), self.train_dataset,
                            self.distillation_settings())

    def _save_checkpoint(self, model, trial):
        # Checkpoints keep the full-size group-sparse model: resuming needs weights shaped like the optimizer state.
        self._saving_checkpoint = True
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        try:
            if self.args.should_save:
                write_run_identity(folder, self._run_identity())
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as error:
            # What was written of this checkpoint cannot be resumed from: remove it (on a full disk that frees the
            # space it took), so that a rerun resumes from the last whole one.
            if self.args.should_save and checkpoint_problem(folder, not self.args.save_only_model):
                shutil.rmtree(folder, ignore_errors=True)
            disk_full = write_failure(error, folder)
            if disk_full is not None:
                raise disk_full from error
            raise
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self._saving_checkpoint:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        small = self.compress()
        small.save_pretrained(output_dir)
        if self.args.oto_save_group_sparse:
            super()._save(os.path.join(output_dir, "group_sparse"), state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        self.write_model_card(output_dir, small)

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None) -> None:
        """Writes the compressed model's card into `output_dir` (`push_to_hub(**kwargs)` calls it with its kwargs).
        The arguments are transformers' (those the HF example scripts pass): `finetuned_from` is the base model,
        `dataset_tags` the Hub datasets (card metadata and the evaluation's dataset type), `dataset` the name shown,
        `dataset_args` the dataset config, `tasks` the task (and pipeline tag, where it names one), `language`,
        `license`, and `tags` added to the card's own."""
        if self.is_world_process_zero():
            self.write_model_card(self.args.output_dir, self.compress(), model_name=model_name,
                                  finetuned_from=finetuned_from, dataset=dataset, language=language, license=license,
                                  tags=tags, tasks=tasks, dataset_tags=dataset_tags, dataset_args=dataset_args)

    def write_model_card(self, output_dir: str, compressed, model_name: str | None = None,
                         finetuned_from: str | None = None, dataset: str | list[str] | None = None, *,
                         language: str | list[str] | None = None, license: str | None = None,
                         tags: str | list[str] | None = None, tasks: str | list[str] | None = None,
                         dataset_tags: str | list[str] | None = None,
                         dataset_args: str | list[str] | None = None) -> str:
        """Write `compressed`'s card (oto_hf.model_card) to `output_dir`/README.md. The arguments (transformers' card
        arguments) come first; what they leave open comes from `self.card_info` (a `CardInfo` that a job script fills
        before saving: its evaluations, measured speedup, stats, base model, name), and the rest from the run itself:
        the OTO settings, the family, the stats of the trained and compressed models, and, without evaluations, the
        evaluation of the model being saved (see `_card_eval_metrics`) on `dataset_tags` / `dataset`."""
        given = CardInfo(model_name=model_name, base_model=finetuned_from, licence=license, language=language,
                         tags=_as_list(tags), task=(_as_list(tasks) or [None])[0],
                         datasets=_as_list(dataset_tags) or None)
        info = given.merged(self.card_info)
        model = self.accelerator.unwrap_model(self.model)
        before = info.before or model_stats(model, self.args.oto_seq_len, exclude_zero_groups=False)
        after = info.after or model_stats(compressed, self.args.oto_seq_len)
        base = info.base_model or getattr(model.config, "_name_or_path", None)
        evaluations = info.evaluations
        if evaluations is None:
            evaluations = card_arguments_evaluations(self._card_eval_metrics(), _as_list(dataset_tags),
                                                     _as_list(dataset), _as_list(dataset_args))
        removed = round(100 * (1 - after.encoder_flops / before.encoder_flops)) if before.encoder_flops else 0
        hub_model = getattr(self, "hub_model_id", None) or self.args.hub_model_id or ""
        name = (info.model_name or hub_model.split("/")[-1]
                or f"{(hub_id(base) or 'model').split('/')[-1]}-oto{removed}")
        settings = {**self.args.oto_options(),
                    **({"distillation": self.distillation_settings()} if self.teacher_model is not None else {})}
        card = model_card(compressed, info, model_name=name, base_model=base, before=before, after=after,
                          settings=settings, evaluations=evaluations, family=self.oto_groups.family.name,
                          licence=info.licence or licence_of(base))
        path = os.path.join(output_dir, "README.md")
        card.save(path)
        return path

    @property
    def model_card_info(self) -> dict:
        """Deprecated (one release): set `card_info`, a `oto_hf.model_card.CardInfo`, instead of this dict."""
        warnings.warn("OTOTrainer.model_card_info is deprecated: use trainer.card_info (an oto_hf.model_card.CardInfo)",
                      DeprecationWarning, stacklevel=2)
        return {k: v for k, v in vars(self.card_info).items() if v not in (None, [])}

    @model_card_info.setter
    def model_card_info(self, info: dict) -> None:
        warnings.warn("OTOTrainer.model_card_info is deprecated: set trainer.card_info = oto_hf.model_card.CardInfo(...)",
                      DeprecationWarning, stacklevel=2)
        self.card_info = CardInfo(**info)

    def _card_eval_metrics(self) -> dict:
        """The evaluation metrics of the model being saved: those logged after training ended, if any; else, where
        `load_best_model_at_end` loaded a checkpoint, those logged at that checkpoint's step; else the latest."""
        history = self.state.log_history
        ends = [i for i, entry in enumerate(history) if "train_runtime" in entry]
        best = self.state.best_model_checkpoint
        step = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(best))) if best else None
        if ends and self.args.load_best_model_at_end and step and not _latest_eval_metrics(history[ends[-1] + 1:]):
            at_best = _latest_eval_metrics([e for e in history[:ends[-1]] if e.get("step") == int(step[1])])
            if at_best:
                return at_best
        return _latest_eval_metrics(history)


class _OTOTrainStartCheck(TrainerCallback):
    """Refuses, at train start (once the number of steps and so the pruning window are known), settings under which
    no evaluation can fall after the window."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        hspg = _unwrap_hspg(optimizer)
        end = _window_end(hspg)
        if not args.load_best_model_at_end or end is None:
            return
        # Step and epoch strategies both evaluate at the last step (or epoch end), which is never inside the window;
        # only an eval_delay past the end of training leaves no evaluation after it.
        strategy = IntervalStrategy(args.eval_strategy)
        last = state.max_steps if strategy == IntervalStrategy.STEPS else state.num_train_epochs
        unit = "steps" if strategy == IntervalStrategy.STEPS else "epochs"
        if args.eval_delay > last:
            raise ValueError(
                f"--load_best_model_at_end with a target only chooses among checkpoints evaluated after the pruning "
                f"window (it closes at step {end} of {state.max_steps}), but --eval_delay {args.eval_delay} leaves no "
                f"evaluation in this run of {last} {unit}. Lower --eval_delay to at most {last}, or drop "
                "--load_best_model_at_end."
            )


def mean_loss_under_gradient_accumulation(trainer: Trainer) -> None:
    """Make `trainer` (any `transformers.Trainer`) divide each micro-batch's loss by the accumulation steps for a model
    whose loss is a mean over its micro-batch, so that `gradient_accumulation_steps=k` gives the gradients, clipping
    and logged loss of one batch k times as large.

    The Trainer assumes that a model whose forward takes `**kwargs` normalises its loss itself by the count of labels
    in the whole accumulated batch (`num_items_in_batch`), and then skips that division. Only causal-LM heads do so;
    the encoder heads' losses (classification, regression, question answering, masked LM, multiple choice, token
    classification) are plain means that ignore the count, so their loss and gradients would come out k times too
    large, which changes gradient clipping and the length of HSPG's SGD steps. Causal-LM heads are left as they are."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        trainer.model_accepts_loss_kwargs = False


MIN_STEPS_PER_PERIOD = 5
"""Fewer optimizer steps than this per pruning period cut the period's groups nearly at once (one-shot pruning, no
gradual shrinking while the rest adapts): the run is warned."""


def _warn_if_the_window_collapsed(asked: OTOSettings, settings: OTOSettings) -> None:
    """Warn when training is too short for the schedule `asked` (in fractions): the window `settings` (in steps) has
    fewer than `MIN_STEPS_PER_PERIOD` steps per asked period, so the target is removed in one or a few steps. Says
    how many steps the schedule needs."""
    if not settings.has_target or settings.prune_steps >= MIN_STEPS_PER_PERIOD * asked.num_periods:
        return
    needed = math.ceil(MIN_STEPS_PER_PERIOD * asked.num_periods / asked.prune_fraction)
    logger.warning(
        f"The pruning window has {settings.prune_steps} optimizer step(s) for {asked.num_periods} period(s) "
        f"(starting at step {settings.half_space_start_step}): the target is cut out in "
        f"{settings.num_periods} step(s), nearly one-shot, with no gradual shrinking. For this schedule "
        f"(--oto_prune_fraction {asked.prune_fraction:g}, --oto_num_periods {asked.num_periods}) train at least "
        f"{needed} optimizer steps (more --max_steps, epochs or data), or lower --oto_num_periods.")


def _unwrap_hspg(optimizer) -> HSPG | None:
    while optimizer is not None and not isinstance(optimizer, HSPG):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


def _window_end(hspg: HSPG | None) -> int | None:
    return None if hspg is None else hspg.settings.window_end_step


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _latest_eval_metrics(log_history: list[dict]) -> dict:
    metrics = {}
    for entry in log_history:
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    return metrics


__all__ = ["OTOTrainer", "OTOTrainingArguments", "mean_loss_under_gradient_accumulation"]
