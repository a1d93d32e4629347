#!/usr/bin/env bash
# Runs the C++ example on N local processes meeting in a fresh c10d FileStore,
# then checks outside the program that every rank wrote the same parameters.
#   examples/cpp/run_ranks.sh <hpsgd_train> [N=2] [work folder] [extra args...]
set -euo pipefail
exe=$1; world=${2:-2}; work=${3:-$(mktemp -d)}; shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$work"
rm -f "$work"/store "$work"/rank*.txt
pids=()
for ((r = 0; r < world; r++)); do
  # A rank whose peer died waits for it at most 90 s, never for ever.
  timeout 90 "$exe" --rank "$r" --world "$world" --store "$work/store" --out "$work/rank$r.txt" "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
if [ "$rc" -ne 0 ]; then echo "run_ranks: a rank failed (exit $rc)" >&2; exit "$rc"; fi
for ((r = 1; r < world; r++)); do
  cmp -s "$work/rank0.txt" "$work/rank$r.txt" || { echo "run_ranks: rank $r's parameters differ from rank 0's" >&2; exit 1; }
done
echo "run_ranks: $world ranks, identical parameters ($(wc -l < "$work/rank0.txt") values)"
