"""The peer baseline of P1, P4 and P7: one-shot structured pruning of the dense fine-tuned model with Torch-Pruning.

What it does (`prune_peer`):

1. Gradients for the Taylor criterion: the task's training loss (SQuAD, or classification) of the dense fine-tuned
   model, summed over `calib_batches` training batches (a seeded shuffle of the training features, the training batch
   size; eval mode, so no dropout), accumulated in `.grad`.
2. Torch-Pruning (`tp.pruner.MetaPruner`, `tp.importance.GroupTaylorImportance()`, i.e. |w·∇w| summed over each
   coupled group and mean-normalised per layer, Torch-Pruning's default) prunes whole attention heads
   (`num_heads`, `prune_num_heads=True`, `prune_head_dims=False`) and FFN neurons, ranked globally across layers
   (`global_pruning=True`), with the same ratio r for heads (`head_pruning_ratio`) and FFN neurons
   (`pruning_ratio`). By default the hidden width (residual stream) is kept: the attention output projections, the
   FFN output projections, the pooler and the task head are `ignored_layers`. With `hidden=True` (P7) only the pooler
   and the task head are: the stream's channels (their columns of the embeddings, entries of every LayerNorm, rows of
   the output projections, columns of every reader) form one more coupled group, ranked with the heads and neurons
   in the same global Taylor ranking and cut at the same ratio r. r is bisected until the encoder FLOPs per example
   at the task's length (384 tokens for SQuAD; `oto_hf.model_stats` of the compressed model) are within `tolerance`
   of the OTO point's.
3. Torch-Pruning's pruned `BertFor…` model has layers of different sizes, which `from_pretrained` cannot
   reload; so the stream channels, heads and neurons it kept are read off its weights (exact matches with the dense
   model's columns and rows), the others are zeroed in a copy of the dense model and `oto_hf.compress` cuts them out,
   giving a loadable `OTOBert` model with exactly the same weights. Where the stream is cut, Torch-Pruning's
   narrower LayerNorms (mean and variance over the kept channels) are what `compress` makes too. The largest |Δ| of
   the task outputs between the two is recorded (float32 rounding level expected).
"""

import copy
import time

import torch

import oto_hf
from oto_hf.groups import HEAD, HIDDEN, NEURON


def _calibration_grads(model, features, batch_size: int, n_batches: int, seed: int, log, device="cpu",
                       collate=None) -> dict:
    """The task loss's gradients summed over `n_batches` random training batches, on the CPU (computed on `device`:
    at full scale 200 batches take minutes on a CPU and seconds on a GPU; the dense model itself stays where it is).
    `collate` makes a batch from a list of feature rows (default: the SQuAD features' columns as tensors)."""
    work = model if torch.device(device) == next(model.parameters()).device else copy.deepcopy(model).to(device)
    work.eval()
    work.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=gen).tolist()
    names = ["input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"]
    n_batches = min(n_batches, len(order) // batch_size)
    t0 = time.perf_counter()
    losses = []
    for b in range(n_batches):
        if collate is None:
            rows = features[order[b * batch_size:(b + 1) * batch_size]]
            batch = {n: torch.tensor(rows[n], device=device) for n in names if n in rows}
        else:
            batch = {k: v.to(device) for k, v in collate([features[i] for i in order[b * batch_size:(b + 1) * batch_size]]).items()}
        loss = work(**batch).loss
        loss.backward()
        losses.append(loss.item())
        if (b + 1) % 25 == 0 or b + 1 == n_batches:
            log(f"peer: calibration batch {b + 1}/{n_batches}, mean loss {sum(losses) / len(losses):.3f}, "
                f"{time.perf_counter() - t0:.0f}s")
    grads = {n: p.grad.detach().cpu().clone() for n, p in work.named_parameters() if p.grad is not None}
    work.zero_grad(set_to_none=True)
    return {"grads": grads, "batches": n_batches, "batch_size": batch_size, "mean_loss": sum(losses) / len(losses),
            "seconds": time.perf_counter() - t0, "device": str(device)}


def _output_sum(out):
    """A scalar of the model's outputs for Torch-Pruning's dependency trace (QA: start + end logits; else logits)."""
    return out.start_logits.sum() + out.end_logits.sum() if hasattr(out, "start_logits") else out.logits.sum()


def _max_output_diff(a, b) -> float:
    if hasattr(a, "start_logits"):
        return max((a.start_logits - b.start_logits).abs().max().item(), (a.end_logits - b.end_logits).abs().max().item())
    return (a.logits - b.logits).abs().max().item()


def _example_inputs(model, seq_len: int = 64):
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    return {"input_ids": torch.randint(0, vocab, (2, seq_len), generator=g),
            "token_type_ids": torch.zeros(2, seq_len, dtype=torch.long),
            "attention_mask": torch.ones(2, seq_len, dtype=torch.long)}


def tp_prune(dense, grads: dict, ratio: float, hidden: bool = False):
    """A Torch-Pruning-pruned copy of `dense` (heads and FFN neurons, and with `hidden` the residual stream's
    channels: ratio `ratio` each, global Taylor ranking)."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    model = copy.deepcopy(dense).eval()
    for n, p in model.named_parameters():
        p.grad = grads[n].clone() if n in grads else None
    num_heads = {}
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            for proj in (m.query, m.key, m.value):
                num_heads[proj] = m.num_attention_heads
    layers = model.bert.encoder.layer
    # The outputs of every linear outside the encoder layers (the task head, the pooler) are kept; without `hidden`
    # the layers' output projections too, which keeps the whole stream (their outputs are coupled with it).
    inside = {id(m) for layer in layers for m in layer.modules()}
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m) not in inside]
    if not hidden:
        ignored += [l.attention.output.dense for l in layers] + [l.output.dense for l in layers]
    pruner = tp.pruner.MetaPruner(
        model, _example_inputs(model), importance=tp.importance.GroupTaylorImportance(), global_pruning=True,
        pruning_ratio=ratio, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=ratio, ignored_layers=ignored,
        output_transform=_output_sum,
    )
    for group in pruner.step(interactive=True):
        group.prune()
    for m in model.modules():  # Torch-Pruning changes the projections; the module's head count is ours to update
        if isinstance(m, BertSelfAttention):
            # Where Torch-Pruning's ratio would take every head of a layer (its count says 0), it leaves the
            # projections whole (torch-pruning 1.6.1): the heads are what the weights hold.
            m.num_attention_heads = m.query.out_features // m.attention_head_size
            m.all_head_size = m.query.out_features
            assert m.all_head_size == m.num_attention_heads * m.attention_head_size
            assert pruner.num_heads[m.query] in (m.num_attention_heads, 0)
    model.zero_grad(set_to_none=True)
    return model


def _match_rows(full: torch.Tensor, kept: torch.Tensor) -> list[int]:
    """Indices of the rows of `full` equal to each row of `kept` (exactly, in order)."""
    full, kept = full.contiguous(), kept.contiguous()
    index = {full[i].numpy().tobytes(): i for i in range(full.shape[0])}
    out = []
    for r in kept:
        i = index.get(r.numpy().tobytes())
        if i is None:
            raise RuntimeError("a pruned row matches no row of the dense model")
        out.append(i)
    if out != sorted(out) or len(set(out)) != len(out):
        raise RuntimeError("kept rows are not an ordered subset of the dense rows")
    return out


@torch.no_grad()
def to_oto_bert(dense, pruned):
    """`oto_hf.compress` of `dense` with the stream channels, heads and neurons `pruned` removed: the same weights,
    loadable."""
    sparse = copy.deepcopy(dense).eval()
    words, kept_words = dense.bert.embeddings.word_embeddings.weight, pruned.bert.embeddings.word_embeddings.weight
    stream = _match_rows(words.T, kept_words.T)  # the stream channels kept: columns of the word embeddings
    cut_stream = len(stream) < words.shape[1]
    groups = oto_hf.zero_invariant_groups(sparse, prune_hidden=cut_stream)
    keep = torch.zeros(groups.num_groups, dtype=torch.bool)
    if cut_stream:
        keep[(groups.kinds == HIDDEN).nonzero().view(-1)[stream]] = True
    kept_heads, kept_neurons = [], []
    for i, (ld, lp) in enumerate(zip(dense.bert.encoder.layer, pruned.bert.encoder.layer)):
        a = ld.attention.self
        d, h = a.attention_head_size, len(stream)
        full_q = a.query.weight[:, stream].reshape(a.num_attention_heads, d * h)
        kept_q = lp.attention.self.query.weight.reshape(-1, d * h)
        heads = _match_rows(full_q, kept_q)
        neurons = _match_rows(ld.intermediate.dense.weight[:, stream], lp.intermediate.dense.weight)
        kept_heads.append(heads)
        kept_neurons.append(neurons)
        for kind, idx in ((HEAD, heads), (NEURON, neurons)):
            sel = (groups.kinds == kind) & (groups.layers == i)
            ids = sel.nonzero().view(-1)
            if idx:
                keep[ids[torch.tensor(idx, dtype=torch.long)]] = True
    groups.zero_((~keep).nonzero().view(-1))
    small = oto_hf.compress(sparse)
    x = _example_inputs(dense, 128)
    diff = _max_output_diff(pruned.eval()(**x), small.eval()(**x))
    return small, {"kept_heads": kept_heads, "kept_neurons_count": [len(n) for n in kept_neurons],
                   "hidden_size": len(stream), "max_abs_logit_diff_tp_vs_compressed": diff}


def prune_peer(dense, data, train_args, target_flops_kept: float, seq_len: int = 384, calib_batches: int = 200,
               tolerance: float = 0.005, max_iter: int = 14, log=print, collate=None, hidden: bool = False):
    """One-shot Torch-Pruning Taylor pruning of `dense` to `target_flops_kept` of its encoder FLOPs (with `hidden`,
    the residual stream's channels too). Returns (OTOBert model, info dict)."""
    import importlib.metadata

    t0 = time.perf_counter()
    tp_version = importlib.metadata.version("torch-pruning")
    torch.manual_seed(train_args.seed)
    calib = _calibration_grads(dense, data["train_features"], train_args.per_device_train_batch_size,
                               calib_batches, train_args.seed, log, device=train_args.device, collate=collate)
    ref = oto_hf.model_stats(dense, seq_len)
    lo, hi = 0.0, 0.95
    tried = []
    best = None
    for it in range(max_iter):
        r = (lo + hi) / 2 if it else 1 - target_flops_kept  # start at the nominal ratio
        small, conv = to_oto_bert(dense, tp_prune(dense, calib["grads"], r, hidden))
        st = oto_hf.model_stats(small, seq_len)  # counted on the loadable form
        k = st.encoder_flops / ref.encoder_flops
        tried.append({"ratio": r, "encoder_flops_kept": k, "heads": st.heads_per_layer,
                      "ffn": st.ffn_width_per_layer, "hidden_size": st.hidden_size})
        log(f"peer: ratio {r:.4f} -> encoder FLOPs kept {k:.4f} (target {target_flops_kept:.4f}); heads "
            f"{st.heads_per_layer}, FFN {st.ffn_width_per_layer}, hidden width {st.hidden_size}")
        if best is None or abs(k - target_flops_kept) < abs(best[1] - target_flops_kept):
            best = (r, k, small, conv, st)
        if abs(k - target_flops_kept) <= tolerance:
            break
        if k > target_flops_kept:
            lo = max(lo, r)
        else:
            hi = min(hi, r)
    r, k, small, conv, st = best
    if conv["max_abs_logit_diff_tp_vs_compressed"] > 1e-3:
        raise RuntimeError(f"compressed model differs from the Torch-Pruning model: {conv}")
    info = {
        "label": ("Torch-Pruning one-shot Taylor (GroupTaylorImportance, global) heads + FFN neurons"
                  + " + hidden channels" * hidden + ", then AdamW"),
        "criterion": (f"torch-pruning {tp_version} MetaPruner + GroupTaylorImportance() "
                      "(|w*grad| summed over each coupled group, mean-normalised per layer), global ranking, whole "
                      "heads (prune_num_heads, num_heads per Q/K/V) and FFN neurons"
                      + (" and the residual stream's channels, same ratio r for all; " if hidden else
                         ", same ratio r for both; ") +
                      f"gradients of the task loss summed over {calib['batches']} training batches of "
                      f"{calib['batch_size']} (dense fine-tuned model, eval mode)"),
        "torch_pruning_version": tp_version,
        "ratio": r, "encoder_flops_kept": k, "target_flops_kept": target_flops_kept, "search": tried,
        "calibration": {key: v for key, v in calib.items() if key != "grads"},
        "heads_per_layer": st.heads_per_layer, "ffn_width_per_layer": st.ffn_width_per_layer, "hidden": hidden,
        **conv, "seconds": time.perf_counter() - t0,
    }
    log(f"peer: pruned to {k:.4f} encoder FLOPs kept with ratio {r:.4f}; |Δlogits| TP vs compressed "
        f"{conv['max_abs_logit_diff_tp_vs_compressed']:.2e}")
    return small, info
