"""Distillation from a dense teacher: the loss itself, and OTOTrainer / DistillationTrainer with a real MiniLM teacher
on real SQuAD features."""

import copy
import json
import math

import pytest
import torch
from transformers import BertForQuestionAnswering, TrainingArguments
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from oto_hf import DistillationTrainer, OTOTrainer, compress, distillation_loss, hidden_state_loss, zero_invariant_groups
from test_trainer import SEQ, make_args, small_bert, squad_sample  # noqa: F401  (squad_sample is a fixture)


def qa_outputs(start, end):
    return QuestionAnsweringModelOutput(start_logits=torch.as_tensor(start), end_logits=torch.as_tensor(end))


def test_loss_is_the_tempered_kl_times_t_squared_averaged_over_start_and_end():
    student = qa_outputs([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    teacher = qa_outputs([[0.5, 2.5, 0.0], [1.0, 0.0, 2.0]], [[0.0, 0.0, 3.0], [2.0, 1.0, 0.0]])
    temperature = 2.0

    def kl(t_row, s_row):  # KL(teacher || student) of one row, written out
        p = [math.exp(v / temperature) for v in t_row]
        q = [math.exp(v / temperature) for v in s_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    expected = []
    for name in ("start_logits", "end_logits"):
        rows = zip(getattr(teacher, name).tolist(), getattr(student, name).tolist())
        expected.append(sum(kl(t, s) for t, s in rows) / 2)  # mean over the 2 examples
    expected = sum(expected) / 2 * temperature**2
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)
    # A student that agrees with its teacher pays nothing; a shift of all logits changes no distribution.
    assert distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-7)
    shifted = qa_outputs(teacher.start_logits + 5.0, teacher.end_logits - 1.0)
    assert distillation_loss(shifted, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_classification_logits_and_clear_errors():
    student = SequenceClassifierOutput(logits=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    teacher = SequenceClassifierOutput(logits=torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert distillation_loss(student, teacher, 1.0).item() > 0
    wrong = SequenceClassifierOutput(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="disagree on 'logits'.*same label space"):
        distillation_loss(student, wrong, 1.0)
    with pytest.raises(ValueError, match="none of"):
        distillation_loss({"hidden": torch.zeros(2)}, teacher, 1.0)


def test_hidden_term_is_the_relative_squared_error_of_each_layer_over_the_kept_tokens():
    generator = torch.Generator().manual_seed(0)
    teacher = tuple(torch.randn(2, 3, 4, generator=generator) for _ in range(3))  # embeddings, layer 1, layer 2
    student = tuple(torch.randn(2, 3, 4, generator=generator) for _ in range(3))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second example's last token is padding

    def relative_error(s, t):  # one layer, written out token by token
        error = scale = 0.0
        for b in range(2):
            for i in range(3):
                if mask[b, i]:
                    error += sum((s[b, i, d].item() - t[b, i, d].item()) ** 2 for d in range(4))
                    scale += sum(t[b, i, d].item() ** 2 for d in range(4))
        return error / scale

    expected = (relative_error(student[1], teacher[1]) + relative_error(student[2], teacher[2])) / 2
    with pytest.warns(DeprecationWarning, match="hidden_state_loss is deprecated"):
        assert hidden_state_loss(student, teacher, mask).item() == pytest.approx(expected, rel=1e-5)
    # Neither the embeddings' output nor a padding token counts; a student equal to its teacher pays nothing.
    moved = (student[0] + 10.0, student[1].clone(), student[2].clone())
    moved[1][1, 2] += 5.0
    moved[2][1, 2] -= 3.0
    assert hidden_state_loss(moved, teacher, mask).item() == pytest.approx(expected, rel=1e-5)
    assert hidden_state_loss(teacher, teacher, mask).item() == 0.0
    # Without a mask every token counts (here: the padding token changes the value).
    assert hidden_state_loss(moved, teacher).item() != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="layer l of the student with layer l of the teacher.*2 layers.*1 of shape"):
        hidden_state_loss(student, teacher[:2], mask)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        hidden_state_loss(None, teacher, mask)


def test_a_compressed_model_is_compared_with_its_dense_teacher_layer_by_layer(minilm_path, squad_sample):
    """Compression removes heads and FFN neurons, not layers or hidden units: the compressed model's layer outputs
    are those of the group-sparse model it came from, so the hidden term against it is zero (float rounding)."""
    tokenizer, features, _, _ = squad_sample
    sparse = small_bert(minilm_path).eval()
    groups = zero_invariant_groups(sparse)
    groups.zero_(torch.rand(groups.num_groups, generator=torch.Generator().manual_seed(3)) < 0.5)
    small = compress(sparse).eval()
    assert sum(small.config.num_attention_heads_per_layer) < 2 * sparse.config.num_attention_heads
    inputs = {k: torch.tensor(features[k][:4]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        out_sparse, out_small = (m(**inputs, output_hidden_states=True) for m in (sparse, small))
        out_dense = small_bert(minilm_path).eval()(**inputs, output_hidden_states=True)
    assert hidden_state_loss(out_small.hidden_states, out_sparse.hidden_states, inputs["attention_mask"]).item() < 1e-9
    assert hidden_state_loss(out_small.hidden_states, out_dense.hidden_states, inputs["attention_mask"]).item() > 1e-3


def teacher_model(minilm_path):
    """A different model of the same task and vocabulary: the student's weights moved by a fixed perturbation."""
    teacher = small_bert(minilm_path)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return teacher


def plain_args(output_dir):
    return TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-4,
                             use_cpu=True, report_to=[], logging_steps=3, save_strategy="no", seed=0, disable_tqdm=True,
                             optim="adamw_torch")


@pytest.mark.parametrize("trainer_class", [OTOTrainer, DistillationTrainer])
def test_training_with_a_teacher_blends_the_losses_and_leaves_the_teacher_alone(trainer_class, minilm_path,
                                                                                 squad_sample, tmp_path):
    tokenizer, features, _, _ = squad_sample
    teacher = teacher_model(minilm_path)
    before = copy.deepcopy(teacher.state_dict())
    alpha = 0.7
    args = make_args(tmp_path / "run", max_steps=6) if trainer_class is OTOTrainer else plain_args(tmp_path / "run")
    trainer = trainer_class(model=small_bert(minilm_path), args=args, train_dataset=features,
                            processing_class=tokenizer, teacher_model=teacher, distillation_alpha=alpha,
                            distillation_temperature=3.0)
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        task, kd = entry["distill_task_loss"], entry["distill_kd_loss"]
        assert task > 0 and kd > 0
        # The Trainer's own loss is the blend of the two terms it was built from (same steps, same weights).
        assert entry["loss"] == pytest.approx((1 - alpha) * task + alpha * kd, rel=1e-3, abs=1e-3)
    # The teacher is never trained: same weights, eval mode, no gradients.
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    if trainer_class is OTOTrainer:
        trainer.save_model()
        card = (tmp_path / "run" / "README.md").read_text()
        settings = json.loads(card.split("```json\n")[1].split("```")[0])
        assert settings["distillation"]["alpha"] == alpha and settings["distillation"]["temperature"] == 3.0


@pytest.mark.parametrize("trainer_class", [OTOTrainer, DistillationTrainer])
def test_the_retired_hidden_weight_is_refused_and_its_old_default_warns(trainer_class, minilm_path, squad_sample,
                                                                       tmp_path):
    """distillation_hidden_weight is retired (docs/experiments.md): a weight is refused with where it still runs; 0,
    its old default that changed nothing, still builds the trainer for one release, with a DeprecationWarning."""
    tokenizer, features, _, _ = squad_sample
    args = (make_args(tmp_path / "run", max_steps=2, oto_target=None, oto_lambda_only=True)
            if trainer_class is OTOTrainer else plain_args(tmp_path / "run"))
    kwargs = dict(model=small_bert(minilm_path), args=args, train_dataset=features, processing_class=tokenizer,
                  teacher_model=small_bert(minilm_path))
    with pytest.raises(ValueError, match="distillation_hidden_weight=1.0: the hidden-state term is retired.*9a312b9"):
        trainer_class(**kwargs, distillation_hidden_weight=1.0)
    with pytest.warns(DeprecationWarning, match="distillation_hidden_weight is retired"):
        trainer = trainer_class(**kwargs, distillation_hidden_weight=0.0)
    assert trainer.distillation_settings() == {"teacher": trainer.distillation_settings()["teacher"], "alpha": 0.5,
                                               "temperature": 2.0}


def test_a_teacher_pulls_the_student_towards_its_answers(minilm_path, squad_sample, tmp_path):
    """alpha = 1 trains on the teacher's distributions alone: the KD term must fall as the student learns them."""
    tokenizer, features, _, _ = squad_sample
    args = make_args(tmp_path / "run", max_steps=12, logging_steps=6, oto_target=None, oto_lambda_only=True,
                     oto_lambda=0.0, learning_rate=3e-4)
    trainer = OTOTrainer(model=small_bert(minilm_path), args=args, train_dataset=features, processing_class=tokenizer,
                         teacher_model=teacher_model(minilm_path), distillation_alpha=1.0, distillation_temperature=1.0)
    trainer.train()
    kd = [entry["distill_kd_loss"] for entry in trainer.state.log_history if "distill_kd_loss" in entry]
    assert len(kd) == 2 and kd[1] < kd[0]


def test_bad_teacher_or_settings_are_refused(minilm_path, squad_sample, tmp_path):
    tokenizer, features, _, _ = squad_sample
    other_vocab = BertForQuestionAnswering(small_bert(minilm_path).config.__class__(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match="vocabulary"):
        OTOTrainer(model=small_bert(minilm_path), args=make_args(tmp_path / "a"), train_dataset=features,
                   teacher_model=other_vocab)
    for alpha, temperature, message in ((0.0, 2.0, "alpha must lie in"), (1.5, 2.0, "alpha must lie in"),
                                        (0.5, 0.0, "temperature must be > 0")):
        with pytest.raises(ValueError, match=message):
            DistillationTrainer(model=small_bert(minilm_path), args=plain_args(tmp_path / "b"), train_dataset=features,
                                teacher_model=teacher_model(minilm_path), distillation_alpha=alpha,
                                distillation_temperature=temperature)
    deeper = BertForQuestionAnswering.from_pretrained(minilm_path, num_hidden_layers=3)
    DistillationTrainer(model=small_bert(minilm_path), args=plain_args(tmp_path / "b"), train_dataset=features,
                        teacher_model=deeper)  # the logits alone are compared: any depth may teach
