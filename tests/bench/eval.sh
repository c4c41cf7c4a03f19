#!/usr/bin/env bash
# `make bench`: the COCO evaluator on a generated val2017-sized case (tests/bench/bench_eval.c),
# on one core (issue 4's target: evaluation <= 1 s). With EFFDET_BENCH_GT=FILE it also times
# reading that ground truth file (e.g. a train2017-sized one) and reports the peak RSS.
set -eu
cd "$(dirname "$0")/../.."
BENCH=${EFFDET_BUILD:-build}/tests/bench/bench_eval
one_core=""
command -v taskset >/dev/null && one_core="taskset -c 0"
$one_core "$BENCH" ${EFFDET_BENCH_GT:+--gt "$EFFDET_BENCH_GT"}
