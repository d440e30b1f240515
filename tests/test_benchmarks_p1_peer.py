"""benchmarks/p1_peer.py: the Torch-Pruning peer's one-shot pruning gives an equal compressed OTOBert model."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

import oto_hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _tiny_qa(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=128)
    return BertForQuestionAnswering(config).eval()


@pytest.mark.parametrize("hidden,ratio", [(False, 0.5), (True, 0.5), (True, 0.95)],
                         ids=["heads+neurons", "with hidden channels", "a ratio that takes every head"])
def test_torch_pruning_peer_gives_an_equal_compressed_model(hidden, ratio):
    """(At 0.95 Torch-Pruning's head count of a layer reaches 0 and it leaves the projections whole: the peer takes
    the heads the weights hold.)"""
    pytest.importorskip("torch_pruning")
    import p1_peer

    dense = _tiny_qa()
    x = {"input_ids": torch.randint(0, 200, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long)}
    out = dense(**x, start_positions=torch.tensor([1, 2, 3, 4]), end_positions=torch.tensor([5, 6, 7, 8]))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in dense.named_parameters() if p.grad is not None}
    dense.zero_grad(set_to_none=True)
    pruned = p1_peer.tp_prune(dense, grads, ratio, hidden=hidden)
    assert dense.bert.encoder.layer[0].intermediate.dense.out_features == 96  # the dense model is left untouched
    width = pruned.bert.embeddings.LayerNorm.weight.shape[0]
    assert (width < 64) == hidden  # the stream is cut only when asked
    small, info = p1_peer.to_oto_bert(dense, pruned)
    stats = oto_hf.model_stats(small, 384)
    assert stats.hidden_size == info["hidden_size"] == width
    assert sum(stats.heads_per_layer) == sum(l.attention.self.query.out_features for l in pruned.bert.encoder.layer) // 16
    assert sum(stats.ffn_width_per_layer) == sum(l.intermediate.dense.out_features for l in pruned.bert.encoder.layer)
    assert sum(stats.ffn_width_per_layer) < 2 * 96
    assert all(l.attention.self.num_attention_heads * 16 == l.attention.self.query.out_features
               for l in pruned.bert.encoder.layer)
    # the loadable model computes Torch-Pruning's model (its narrower LayerNorms included), scaled to the outputs
    x = {"input_ids": torch.randint(0, 200, (3, 40)), "attention_mask": torch.ones(3, 40, dtype=torch.long)}
    x["attention_mask"][0, 30:] = 0
    ref, got = pruned(**x), small(**x)
    scale = ref.start_logits.abs().max().item()
    assert info["max_abs_logit_diff_tp_vs_compressed"] <= 1e-5 * max(1.0, scale)
    torch.testing.assert_close(got.start_logits, ref.start_logits, rtol=0, atol=1e-5 * max(1.0, scale))
    torch.testing.assert_close(got.end_logits, ref.end_logits, rtol=0, atol=1e-5 * max(1.0, scale))
    assert not hidden or small.config.compressed_hidden_size == width
