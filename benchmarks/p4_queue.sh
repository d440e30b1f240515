#!/usr/bin/env bash
# The P4 runs in the order they were run on the 2-core CPU (each is resumable and skipped once it has a result):
# seed 0 of every SST-2 point, then RTE's seed 0, SST-2's second seed, and RTE's seeds 1 and 2; a summary after each.
#     nohup bash benchmarks/p4_queue.sh > benchmarks/results/p4_queue.log 2>&1 &   (the seed-0 SST-2 log: p4_sst2/queue_seed0.log)
set -u
cd "$(dirname "$0")/.."
run() { python benchmarks/quality.py run "$@" --table benchmarks/p4.yaml; }
summarize() { python benchmarks/quality.py summarize --table benchmarks/p4.yaml --suite "$1"; }
run dense oto50 oto70 tp70 tp50 --suite sst2; summarize sst2
run dense oto50 oto70 tp70 tp50 --suite rte; summarize rte
run denseseed1 oto50seed1 oto70seed1 tp70seed1 tp50seed1 --suite sst2; summarize sst2
run denseseed1 oto50seed1 oto70seed1 tp70seed1 tp50seed1 \
    denseseed2 oto50seed2 oto70seed2 tp70seed2 tp50seed2 --suite rte; summarize rte
