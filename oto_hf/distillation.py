"""Knowledge distillation from a dense teacher while a model is trained (and, with `OTOTrainer`, pruned).

Every method in the reference table that ends level with its dense model after structured pruning (block movement
pruning, CoFi) trains the pruned model against the dense model's outputs as well as against the labels; OTO alone does
not. `DistillationMixin` adds that to any `Trainer`:

    loss = (1 − α) · task loss + α · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

averaged over the model's logit outputs (start and end logits for question answering, `logits` for
classification). The teacher runs in eval mode without gradients on the same inputs (labels removed); it is never
trained, saved or checkpointed: pass it again when resuming.

    trainer = OTOTrainer(model=student, args=args, ..., teacher_model=dense_finetuned)
    trainer = DistillationTrainer(model=student, args=TrainingArguments(...), ..., teacher_model=dense_finetuned)
"""

import math
import warnings

import torch
import torch.nn.functional as F
from transformers import Trainer


# The output fields that hold logits over a softmax axis (the last one), in the order a model family returns them.
LOGIT_FIELDS = ("start_logits", "end_logits", "logits")
LABEL_INPUTS = ("labels", "start_positions", "end_positions")


def distillation_loss(student_outputs, teacher_outputs, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) on temperature-softened distributions over the last axis, averaged over the other
    axes (per example for question answering and classification, per token for token classification) and over the
    logit fields the outputs have. The T² keeps its gradient on the task loss's scale
    whatever T (Hinton et al., 2015)."""
    fields = [name for name in LOGIT_FIELDS if _field(student_outputs, name) is not None]
    if not fields:
        raise ValueError(
            f"distillation needs logits: the student's outputs have none of {LOGIT_FIELDS} "
            f"(got {type(student_outputs).__name__})"
        )
    losses = []
    for name in fields:
        student, teacher = _field(student_outputs, name), _field(teacher_outputs, name)
        if teacher is None or teacher.shape != student.shape:
            raise ValueError(
                f"teacher and student disagree on {name!r}: student {tuple(student.shape)}, teacher "
                f"{None if teacher is None else tuple(teacher.shape)}. The teacher must be a model of the same task "
                "with the same label space (e.g. the dense fine-tuned model the student was pruned from)."
            )
        log_p_student = F.log_softmax(student.float() / temperature, dim=-1).flatten(0, -2)
        log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1).flatten(0, -2)
        losses.append(F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True))
    return torch.stack(losses).mean() * temperature**2


def hidden_state_loss(student_hidden, teacher_hidden, attention_mask=None) -> torch.Tensor:
    """Deprecated (the trainers no longer use it; removed in oto-hf 0.4): the mean over encoder layers of
    Σ‖h − h_teacher‖² / Σ‖h_teacher‖² over the tokens `attention_mask` keeps, the layer term of the retired
    `distillation_hidden_weight`.

    `student_hidden` and `teacher_hidden` are a model's `hidden_states` (the embeddings' output, then each layer's);
    the embeddings' output is left out, as it is not what pruning changes."""
    warnings.warn("oto_hf.hidden_state_loss is deprecated and will be removed in oto-hf 0.4: the layer term it computes "
                  "gave no gain (docs/experiments.md)", DeprecationWarning, stacklevel=2)
    if student_hidden is None or teacher_hidden is None:
        raise ValueError("hidden-state distillation needs the hidden states of the student and of the teacher "
                         "(call both with output_hidden_states=True)")
    student_layers, teacher_layers = tuple(student_hidden)[1:], tuple(teacher_hidden)[1:]
    if len(student_layers) != len(teacher_layers) or any(
            s.shape != t.shape for s, t in zip(student_layers, teacher_layers)):
        raise ValueError(
            f"hidden-state distillation compares layer l of the student with layer l of the teacher, but the student "
            f"has {len(student_layers)} layers of shape {tuple(student_layers[0].shape) if student_layers else None} "
            f"and the teacher {len(teacher_layers)} of shape "
            f"{tuple(teacher_layers[0].shape) if teacher_layers else None}. Use the dense model the student was "
            "pruned from (pruning heads and FFN neurons keeps both)."
        )
    mask = None if attention_mask is None else attention_mask.unsqueeze(-1).float()
    losses = []
    for student, teacher in zip(student_layers, teacher_layers):
        error = (student.float() - teacher.float()).square()
        scale = teacher.float().square()
        if mask is not None:
            error, scale = error * mask, scale * mask
        losses.append(error.sum() / scale.sum().clamp_min(torch.finfo(torch.float32).tiny))
    return torch.stack(losses).mean()


def _field(outputs, name):
    return outputs.get(name) if isinstance(outputs, dict) else getattr(outputs, name, None)


class DistillationMixin:
    """Put before `Trainer` in a class's bases: `teacher_model` (a trained model of the same task and vocabulary),
    `distillation_alpha` α in (0, 1] (weight of the distillation term; 1 ignores the labels) and
    `distillation_temperature` T > 0. Without a teacher the trainer is unchanged. Each training log gets
    `distill_task_loss` and `distill_kd_loss`, the terms averaged since the last log."""

    def __init__(self, *args, teacher_model=None, distillation_alpha: float = 0.5,
                 distillation_temperature: float = 2.0, **kwargs):
        _refuse_hidden_weight(kwargs)
        if teacher_model is not None:
            check_distillation_settings(distillation_alpha, distillation_temperature)
        self.teacher_model = teacher_model
        self.distillation_alpha = float(distillation_alpha)
        self.distillation_temperature = float(distillation_temperature)
        self._distill_sums = None
        super().__init__(*args, **kwargs)
        if teacher_model is not None:
            student_vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
            teacher_vocab = getattr(getattr(teacher_model, "config", None), "vocab_size", None)
            if student_vocab is not None and teacher_vocab is not None and student_vocab != teacher_vocab:
                raise ValueError(
                    f"the teacher's vocabulary ({teacher_vocab} tokens) is not the student's ({student_vocab}): "
                    "both must read the same token ids. Use a teacher fine-tuned from the same checkpoint."
                )
            # Never trained: eval mode (no dropout), no gradients, on the training device.
            self.teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)

    def distillation_settings(self) -> dict | None:
        """What a report or model card should record; None without a teacher."""
        if self.teacher_model is None:
            return None
        name = getattr(getattr(self.teacher_model, "config", None), "_name_or_path", None)
        return {"teacher": name or type(self.teacher_model).__name__, "alpha": self.distillation_alpha,
                "temperature": self.distillation_temperature}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher_model is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        task_loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                  num_items_in_batch=num_items_in_batch)
        labels = set(LABEL_INPUTS) | set(getattr(self, "label_names", None) or ())
        with torch.no_grad():
            teacher_outputs = self.teacher_model(**{k: v for k, v in inputs.items() if k not in labels})
        kd_loss = distillation_loss(outputs, teacher_outputs, self.distillation_temperature)
        alpha = self.distillation_alpha
        loss = (1 - alpha) * task_loss + alpha * kd_loss
        if model.training:
            sums = torch.stack([task_loss.detach().float(), kd_loss.detach().float(), torch.ones_like(kd_loss).float()])
            self._distill_sums = sums if self._distill_sums is None else self._distill_sums + sums
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._distill_sums is not None and not any(k.startswith(("eval_", "test_")) for k in logs):
            task, kd, count = self._distill_sums.tolist()
            logs["distill_task_loss"] = round(task / count, 4)
            logs["distill_kd_loss"] = round(kd / count, 4)
            self._distill_sums = None
        super().log(logs, *args, **kwargs)


def _refuse_hidden_weight(kwargs: dict) -> None:
    """The retired `distillation_hidden_weight`: a weight above 0 is refused (the layer term is gone), 0 (its old
    default, which changed nothing) is accepted with a DeprecationWarning for one release."""
    if "distillation_hidden_weight" not in kwargs:
        return
    weight = kwargs.pop("distillation_hidden_weight")
    if weight:
        raise ValueError(f"distillation_hidden_weight={weight!r}: the hidden-state term is retired (it gave no gain in "
                         "benchmark P1, docs/experiments.md; it still runs at commit 9a312b9). Leave it out.")
    warnings.warn("distillation_hidden_weight is retired and will be refused in oto-hf 0.4: leave it out",
                  DeprecationWarning, stacklevel=3)


def check_distillation_settings(alpha: float, temperature: float) -> None:
    problems = []
    if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
        problems.append(f"distillation alpha must lie in (0, 1] (the weight of the teacher's term), got {alpha!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        problems.append(f"distillation temperature must be > 0, got {temperature!r}")
    if problems:
        raise ValueError("Invalid distillation settings:\n  - " + "\n  - ".join(problems))


class DistillationTrainer(DistillationMixin, Trainer):
    """A plain `Trainer` (its own optimizer, e.g. AdamW) with the teacher's term: for retraining a model pruned by
    other means against the same teacher, so that comparisons with a distilled OTO run are like for like."""


__all__ = ["DistillationMixin", "DistillationTrainer", "distillation_loss", "hidden_state_loss"]
