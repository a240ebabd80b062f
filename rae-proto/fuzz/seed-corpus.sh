#!/usr/bin/env bash
# Seeds the `decode` fuzz target's corpus (fuzz/corpus/decode, not in git) with the golden
# vectors and one topic of each kind, so that fuzzing starts from valid payloads.
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus/decode
mkdir -p "$corpus"
for vector in ../tests/vectors/v1/*.bin; do
    cp -- "$vector" "$corpus/vector-$(basename "$vector")"
done
session=67e55044-10b1-426f-9247-bb680e5fe0c8
printf '%s' "rae/v1/rae-0042/devices/$session" >"$corpus/topic-devices"
printf '%s' "rae/v1/rae-0042/inventory" >"$corpus/topic-inventory"
printf '%s' "rae/v1/rae-0042/status" >"$corpus/topic-status"
printf '%s' "rae/v1/rae-0042/cmd/set-availability" >"$corpus/topic-cmd"
printf '%s' "rae/v1/rae-0042/reply/ci_runner-7" >"$corpus/topic-reply"
