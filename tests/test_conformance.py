"""Compressed models behave like any transformers model: what transformers' own model tests check of a model class,
for every family and task head, on compressed models with heterogeneous layers (one without any head, one without any
FFN neuron). The stock model of the same class passes the same checks; the tests hold the compressed one to them."""

import gzip

import pytest
import torch
import transformers
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer, Trainer

import families
from conftest import assert_exact, torchrun
from oto_hf import OTOTrainer, OTOTrainingArguments, compress, model_stats
from oto_hf.architectures import get_submodule
from oto_hf.groups import find_base_model, zero_invariant_groups
from oto_hf.modeling_oto import AUTO_CLASSES

HEADS = families.all_heads()
HEAD_IDS = [c for _, c in HEADS]
BASES = [(t, families.task_heads(t)["AutoModel"]) for t in families.MODEL_TYPES]
DECODERS = [(t, c) for t, c in HEADS if "CausalLM" in c or c.endswith("LMHeadModel")]
MASKED_LM = [(t, AUTO_CLASSES["oto_" + t]["AutoModelForMaskedLM"].__bases__[1].__name__) for t in families.MODEL_TYPES
             if "AutoModelForMaskedLM" in AUTO_CLASSES["oto_" + t]]
# Stock class name -> its compressed class.
COMPRESSED = {cls.__bases__[1].__name__: cls for classes in AUTO_CLASSES.values() for cls in classes.values()}


def tensors(output) -> dict[str, torch.Tensor]:
    return {k: v for k, v in output.items() if torch.is_tensor(v)}


def assert_same_outputs(a, b, relative=1e-5):
    """The same tensor outputs, up to float32 rounding relative to their magnitude (`relative=0`: identical)."""
    a, b = tensors(a), tensors(b)
    assert a.keys() == b.keys() and a
    for key in a:
        assert_exact(b[key], a[key], relative, what=key)


@pytest.mark.parametrize("model_type,class_name", HEADS, ids=HEAD_IDS)
def test_save_and_load_round_trip(model_type, class_name, tmp_path):
    small = families.compressed_model(model_type, class_name)
    small.save_pretrained(tmp_path)
    loaded = type(small).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config.num_attention_heads_per_layer == small.config.num_attention_heads_per_layer
    inputs = families.inputs(model_type, class_name)
    with torch.no_grad():
        assert_same_outputs(small(**inputs), loaded(**inputs), relative=0)


@pytest.mark.parametrize("model_type,class_name", BASES, ids=[t for t, _ in BASES])
def test_one_attention_map_and_hidden_state_per_layer(model_type, class_name):
    """Eager attention gives one map per layer, (B, heads kept, T, T), (B, 0, T, T) for the layer without heads, and
    the kept heads' maps are those of the group-sparse model; one hidden state per layer plus the embeddings'."""
    torch.manual_seed(0)
    sparse = families.build(model_type, class_name)
    groups = zero_invariant_groups(sparse)
    groups.zero_((torch.rand(groups.num_groups) < 0.3) | ((groups.layers == 1) & (groups.kinds == 0)))
    small = compress(sparse)
    heads, _ = groups.kept_indices(~groups.is_zero())
    inputs = families.inputs(model_type)
    with torch.no_grad():
        full = sparse(**inputs, output_attentions=True, output_hidden_states=True)
        out = small(**inputs, output_attentions=True, output_hidden_states=True)
    tokens, batch = families.tokens(model_type), 2
    assert len(out.attentions) == 3 and len(out.hidden_states) == 4
    for layer, (attention, kept) in enumerate(zip(out.attentions, heads)):
        assert attention.shape == (batch, len(kept), tokens, tokens), layer
        assert_exact(attention, full.attentions[layer][:, kept], what=f"attentions[{layer}]")
    assert out.attentions[1].shape[1] == 0
    for a, b in zip(out.hidden_states, full.hidden_states):
        assert_exact(a, b, what="hidden state")


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_a_new_task_head_keeps_the_compressed_body(model_type, tmp_path):
    """Re-heading a published pruned model: a head of another size is an error without ignore_mismatched_sizes and a
    fresh head with it; the body loads as saved either way."""
    auto = getattr(transformers, "AutoModelForImageClassification" if model_type in families.VISION
                   else "AutoModelForSequenceClassification")
    small = families.compressed_model(model_type, families.classifier(model_type))
    small.save_pretrained(tmp_path)
    stock = families.build(model_type, families.classifier(model_type))
    stock.save_pretrained(tmp_path / "stock")
    with pytest.raises(Exception) as stock_error:
        auto.from_pretrained(tmp_path / "stock", num_labels=5)
    # What transformers raises (a RuntimeError), so that code written for stock models catches ours too.
    with pytest.raises(stock_error.type, match="ignore_mismatched_sizes=True") as error:
        auto.from_pretrained(tmp_path, num_labels=5)
    assert isinstance(error.value, ValueError) and isinstance(error.value, RuntimeError)
    reheaded = auto.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert reheaded.config.num_labels == 5 and reheaded.num_labels == 5
    assert reheaded.config.num_attention_heads_per_layer == small.config.num_attention_heads_per_layer
    body, new_body = small.base_model.eval(), reheaded.base_model.eval()
    inputs = families.inputs(model_type)
    with torch.no_grad():
        assert_exact(new_body(**inputs).last_hidden_state, body(**inputs).last_hidden_state)
    if model_type in families.VISION:
        return
    # A QA checkpoint gives a classifier its body too (its head is new; ModernBERT names both heads "classifier").
    qa = families.compressed_model(model_type, families.task_heads(model_type)["AutoModelForQuestionAnswering"])
    qa.save_pretrained(tmp_path / "qa")
    classifier = auto.from_pretrained(tmp_path / "qa", num_labels=3, ignore_mismatched_sizes=True).eval()
    with torch.no_grad():
        assert_exact(classifier.base_model(**inputs).last_hidden_state,
                     qa.eval().base_model(**inputs).last_hidden_state)


SDPA = [(t, c) for t, c in HEADS if "sdpa" in families.ATTENTION[t]]


@pytest.mark.parametrize("model_type,class_name", SDPA, ids=[c for _, c in SDPA])
def test_eager_and_sdpa_attention_agree(model_type, class_name, tmp_path):
    families.compressed_model(model_type, class_name).save_pretrained(tmp_path)
    inputs = families.inputs(model_type, class_name)
    outputs = []
    for attn in ("eager", "sdpa"):
        model = COMPRESSED[class_name].from_pretrained(tmp_path, attn_implementation=attn).eval()
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            outputs.append(model(**inputs))
    assert_same_outputs(*outputs)


ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flex_attention")


def _switch(model, implementation: str):
    """What `set_attn_implementation` does to `model`: the implementation it is left on, or the error's type."""
    try:
        model.set_attn_implementation(implementation)
    except Exception as error:  # noqa: BLE001 - the stock class's refusal is the expected answer
        return type(error)
    return model.config._attn_implementation


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_set_attn_implementation_switches_like_the_stock_class(model_type):
    """`set_attn_implementation` switches a compressed model wherever it switches the stock one (and refuses the same
    way where the stock one refuses, e.g. flash attention without its package); after switching to eager, the
    attentions are one tensor per layer, (B, 0, T, T) in the layer without heads, and the outputs are those of the
    other implementations."""
    class_name = families.classifier(model_type)
    start = families.ATTENTION[model_type][-1]
    stock = families.build(model_type, class_name, start)
    small = families.compressed_model(model_type, class_name, start)
    inputs = families.inputs(model_type)
    with torch.no_grad():
        reference = small(**inputs)
    # transformers caches on the class whether it can switch, and a subclass inherits its stock class's cached answer:
    # forget any answer earlier tests left, and ask the compressed class first, as a user does.
    for cls in {*type(small).__mro__, *type(stock).__mro__}:
        if "_can_set_attn_implementation_cached_value" in vars(cls):
            delattr(cls, "_can_set_attn_implementation_cached_value")
    for implementation in ATTENTION_IMPLEMENTATIONS:
        got = _switch(small, implementation)
        assert got == _switch(stock, implementation), implementation
        assert small.config._attn_implementation == stock.config._attn_implementation
        assert _switch(stock, start) == _switch(small, start) == start
    assert _switch(small, "eager") == "eager"
    with torch.no_grad():
        out = small(**inputs, output_attentions=True)
    tokens = families.tokens(model_type)
    heads = small.config.num_attention_heads_per_layer
    assert [tuple(a.shape) for a in out.attentions] == [(2, h, tokens, tokens) for h in heads] and heads[1] == 0
    assert_same_outputs(reference, out)  # the attentions, a tuple, are not compared


def test_ddp_fine_tunes_compressed_models_with_emptied_layers(tmp_path):
    """The prune → re-head → fine-tune story on two processes: the plain Trainer fine-tunes compressed models with a
    layer without heads and one without FFN neurons, with gradient checkpointing on, so that DDP runs with
    find_unused_parameters=False and fails on any parameter that gets no gradient. Every parameter trains, and the
    ranks end with the same weights."""
    ranks = torchrun("ddp_finetune_compressed.py", tmp_path, port=29519)
    assert ranks[0].keys() == {"bert", "deberta-v2", "modernbert", "vit"}
    for model_type, run in ranks[0].items():
        assert (run["ddp"], run["find_unused_parameters"], run["gradient_checkpointing"], run["steps"]) == (
            True, False, True, 2), model_type
        assert run["changed"] == run["parameters"], model_type
        assert run["checksum"] == ranks[1][model_type]["checksum"], model_type


@pytest.mark.parametrize("model_type,class_name", DECODERS, ids=[c for _, c in DECODERS])
def test_the_kv_cache_is_used_and_agrees_with_the_uncached_forward(model_type, class_name):
    """Cached decoding gives the uncached logits, and every layer's attention weights span the cached keys: (B, heads,
    1, 9) for one new token after 8, (B, 0, 1, 9) in the layer without heads."""
    small = families.compressed_model(model_type, class_name)
    assert small.config.num_attention_heads_per_layer[1] == 0
    ids = families.inputs(model_type, length=9)["input_ids"][:2]
    with torch.no_grad():
        full = small(ids).logits
        prefix = small(ids[:, :-1], use_cache=True)
        step = small(ids[:, -1:], cache=prefix.past_key_values, use_cache=True, output_attentions=True)
        assert_exact(step.logits[:, -1], full[:, -1])
        heads = small.config.num_attention_heads_per_layer
        assert [tuple(a.shape) for a in step.attentions] == [(2, h, 1, 9) for h in heads]
        ids = ids[:1]
        for beams in (1, 2):
            args = dict(max_new_tokens=5, do_sample=False, num_beams=beams, output_scores=True,
                        return_dict_in_generate=True, pad_token_id=0)
            cached, uncached = small.generate(ids, use_cache=True, **args), small.generate(ids, use_cache=False, **args)
            assert torch.equal(cached.sequences, uncached.sequences)
            assert_exact(torch.stack(cached.scores), torch.stack(uncached.scores), relative=1e-4)


def _gradients(model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad()
    sum(v.float().sum() for v in tensors(model(**inputs)).values()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _layer_forward_calls(model, inputs) -> int:
    """How many times the first layer's query projection runs in one forward and backward (2 with gradient
    checkpointing, which recomputes the layer from its start during backward; the recomputation may stop before the
    layer's end once it has what backward needs)."""
    family = zero_invariant_groups(model).family
    layer = get_submodule(find_base_model(model), family.layers)[0]
    calls = []
    handle = get_submodule(layer, family.qkv[0]).register_forward_hook(lambda *_: calls.append(1))
    try:
        _gradients(model, inputs)
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("model_type,class_name", BASES, ids=[t for t, _ in BASES])
def test_gradient_checkpointing_through_the_api_and_the_config_gives_the_same_gradients(model_type, class_name,
                                                                                       tmp_path):
    small = families.compressed_model(model_type, class_name).train()
    inputs = families.inputs(model_type)
    reference = _gradients(small, inputs)
    assert _layer_forward_calls(small, inputs) == 1
    small.activation_checkpointing_enable()
    assert _layer_forward_calls(small, inputs) == 2
    checkpointed = _gradients(small, inputs)
    small.activation_checkpointing_disable()
    small.save_pretrained(tmp_path)
    # The legacy switch: `gradient_checkpointing = True` on the config turns it on when the model is built.
    config = type(small.config).from_pretrained(tmp_path)
    config.gradient_checkpointing = True
    legacy = type(small).from_pretrained(tmp_path, config=config, attn_implementation="eager").train()
    assert _layer_forward_calls(legacy, inputs) == 2
    from_config = _gradients(legacy, inputs)
    assert reference.keys() == checkpointed.keys() == from_config.keys()
    for name in reference:
        assert_exact(checkpointed[name], reference[name], relative=1e-4, what=name)
        assert_exact(from_config[name], reference[name], relative=1e-4, what=name)


TEXT_HEADS = [(t, c) for t, c in HEADS if t not in families.VISION]


@pytest.mark.parametrize("model_type,class_name", TEXT_HEADS, ids=[c for _, c in TEXT_HEADS])
def test_resize_token_embeddings(model_type, class_name):
    small = families.compressed_model(model_type, class_name)
    small.resize_token_embeddings(small.config.vocab_size + 13)
    assert small.get_input_embeddings().weight.shape[0] == small.config.vocab_size == 97 + 13
    output = small.get_output_embeddings()
    if output is not None and small.config.tie_word_embeddings:
        assert output.weight.shape[0] == 97 + 13 and output.weight.data_ptr() == small.get_input_embeddings().weight.data_ptr()
    inputs = families.inputs(model_type, class_name)
    inputs["input_ids"] = inputs["input_ids"].clamp(max=96) + 13  # ids beyond the old vocabulary
    with torch.no_grad():
        assert all(torch.isfinite(v).all() for v in tensors(small(**inputs)).values())


@pytest.mark.parametrize("model_type,class_name", MASKED_LM, ids=[c for _, c in MASKED_LM])
def test_masked_lm_weights_stay_tied_after_save_and_load(model_type, class_name, tmp_path):
    small = families.compressed_model(model_type, class_name)
    small.save_pretrained(tmp_path)
    loaded = type(small).from_pretrained(tmp_path)
    tied = small.config.tie_word_embeddings
    same = loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    assert same == tied and tied


@pytest.mark.parametrize("model_type,class_name", BASES, ids=[t for t, _ in BASES])
def test_torch_export_of_the_compressed_model(model_type, class_name):
    small = families.compressed_model(model_type, class_name)
    inputs = families.inputs(model_type)
    exported = torch.export.export(small, args=(), kwargs=inputs)
    with torch.no_grad():
        expected = small(**inputs)
    got = exported.module()(**inputs)
    assert_exact(got["last_hidden_state"], expected.last_hidden_state)


@pytest.mark.parametrize("model_type,class_name", HEADS, ids=HEAD_IDS)
def test_a_training_step(model_type, class_name):
    """Every parameter gets a finite gradient (a layer emptied of heads or FFN neurons holds none that nothing
    reads, as DDP with find_unused_parameters=False requires), and one AdamW step changes the model's outputs."""
    small = families.compressed_model(model_type, class_name).train()
    inputs = families.inputs(model_type, class_name)
    grads = _gradients(small, inputs)
    grouped = [t.name for t in zero_invariant_groups(small).tensors]
    assert grouped and all(n in grads and torch.isfinite(grads[n]).all() for n in grouped)
    assert sorted(n for n, p in small.named_parameters() if p.requires_grad and n not in grads) == []
    assert all(torch.isfinite(g).all() for g in grads.values())
    small.eval()
    with torch.no_grad():
        before = tensors(small(**inputs))
    small.train()
    torch.optim.AdamW(small.parameters(), lr=1e-2).step()
    small.eval()
    with torch.no_grad():
        after = tensors(small(**inputs))
    assert any(not torch.allclose(before[k], after[k]) for k in before)


# ---- the user story: prune on one task, publish, re-head for another task, fine-tune, prune further ----


def _sst2_sample(tokenizer, n: int):
    path = families.SHARED / "data" / "glue" / "SST-2" / "train.tsv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:n + 1]
    encoded = tokenizer([r[0] for r in rows], truncation=True, max_length=48, padding="max_length")
    return [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
             "labels": int(rows[i][1])} for i in range(n)]


def test_prune_publish_rehead_finetune_and_prune_further(minilm_path, tmp_path):
    """Real MiniLM (2 layers) pruned on SQuAD by OTOTrainer and saved; reloaded with a new 2-label head for SST-2;
    fine-tuned there by the plain Trainer (sizes unchanged), saved and reloaded; then pruned further by OTOTrainer,
    saved and reloaded with the same answers and the original sizes still on record."""
    from oto_hf.tasks.common import sample_examples
    from oto_hf.tasks.squad import load_squad, local_squad_files, tokenize_squad

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    raw = load_squad(**local_squad_files("genuine-first11", families.SHARED / "data" / "squad-v1.1"))
    squad = tokenize_squad({"train": sample_examples(raw["train"], 24, seed=0)}, tokenizer, "train",
                           max_seq_length=96, doc_stride=32, max_query_length=24)
    common = dict(per_device_train_batch_size=8, learning_rate=1e-4, use_cpu=True, report_to=[], save_strategy="no",
                  disable_tqdm=True, seed=0)
    oto = dict(oto_half_space_start=0.0, oto_prune_fraction=0.5, oto_num_periods=2, oto_seq_len=96)

    qa = AutoModelForQuestionAnswering.from_pretrained(minilm_path, num_hidden_layers=2)
    trainer = OTOTrainer(model=qa, args=OTOTrainingArguments(output_dir=str(tmp_path / "qa"), max_steps=4,
                                                             oto_target=0.3, **oto, **common),
                         train_dataset=squad, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    pruned_heads = trainer.compress().config.num_attention_heads_per_layer

    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "qa", num_labels=2)
    assert classifier.config.num_attention_heads_per_layer == pruned_heads
    sst2 = _sst2_sample(tokenizer, 32)
    plain = Trainer(model=classifier, args=transformers.TrainingArguments(output_dir=str(tmp_path / "sst2"),
                                                                          max_steps=4, **common),
                    train_dataset=sst2, processing_class=tokenizer)
    plain.train()
    plain.save_model()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sst2").eval()
    batch = {k: torch.tensor([row[k] for row in sst2[:4]]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert_exact(reloaded(**batch).logits, classifier.eval()(**batch).logits)
    assert reloaded.config.num_attention_heads_per_layer == pruned_heads

    further = OTOTrainer(model=reloaded.train(), args=OTOTrainingArguments(
        output_dir=str(tmp_path / "sst2_more"), max_steps=4, oto_target=0.3, **oto, **common),
        train_dataset=sst2, processing_class=tokenizer)
    further.train()
    further.save_model()
    smallest = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sst2_more").eval()
    with torch.no_grad():
        assert_exact(smallest(**batch).logits, further.compress().eval()(**batch).logits)
    assert sum(smallest.config.num_attention_heads_per_layer) < sum(pruned_heads)
    info = smallest.config.oto_pruning_info
    assert info["original_num_attention_heads_per_layer"] == [12, 12] and info["stats_seq_len"] == 96
    # 30% of the encoder FLOPs removed twice: at most 0.7 × 0.7 of the original left.
    assert model_stats(smallest, 96).encoder_flops <= 0.49 * info["original_encoder_flops"] * 1.001
