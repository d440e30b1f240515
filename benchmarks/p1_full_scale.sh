#!/usr/bin/env bash
# P1 at full scale on one GPU (suite p1_full of benchmarks/p1.yaml: every train and dev question, the CPU proxy's
# other settings, lr 2e-4), results in benchmarks/results/p1_full_lr0.0002/<run>/result.json as for the proxy.
#
#   bash benchmarks/p1_full_scale.sh <pretrained MiniLM folder> [log folder]
#
# MiniLM (6 x 384) leaves an H100 mostly idle at batch 16, so two chains share it:
#   1. dense -> the recipe with alpha 0.9 (oto50zerouniformfromdensekdalpha09: dense start and teacher) -> its peer
#   2. today's default OTO50 (oto50zerouniform, from the pretrained model) -> its peer tp50, which prunes the dense
#      model of chain 1 and so waits for it.
# PYTHON names the interpreter (default python3). Each run is resumable as in the proxy (a finished one is
# skipped, an interrupted one resumes from its checkpoint). Timings: docs/benchmarks.md, "P1 at full scale on a GPU".
set -u
model=${1:?usage: bash benchmarks/p1_full_scale.sh <pretrained MiniLM folder> [log folder]}
logs=${2:-benchmarks/results/tmp/p1_full_logs}
results=benchmarks/results/p1_full_lr0.0002
mkdir -p "$logs"
p1() { ${PYTHON:-python3} benchmarks/quality.py run "$1" --suite p1_full --model_name_or_path "$model" \
         > "$logs/$1.log" 2>&1; }
(
  p1 dense && touch "$logs/dense.ok" || touch "$logs/dense.failed"
  [ -f "$logs/dense.ok" ] && p1 oto50zerouniformfromdensekdalpha09 && p1 tp50kdalpha09
) &
(
  p1 oto50zerouniform
  while [ ! -f "$logs/dense.ok" ] && [ ! -f "$logs/dense.failed" ]; do sleep 10; done
  [ -f "$logs/dense.ok" ] && [ -f "$results/oto50zerouniform/result.json" ] && p1 tp50
) &
wait
echo "p1_full_scale: finished; results:"
ls "$results"/*/result.json 2>/dev/null
