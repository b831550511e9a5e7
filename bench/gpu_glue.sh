#!/usr/bin/env bash
# The GLUE quality experiment of log.md on one GPU, end to end in about ten minutes: pretrain the
# `mini` encoder (configs/pretrain_mini_gpu.yaml, shortened), check that it uses word order and
# what its frozen features know about SST-2 (bench/linear_probe.py), then fine-tune it and the
# random baseline (same shape and tokenizer) on the five local GLUE tasks, 3 seeds each, mean-pooled
# (the plan since log.md session 7), all runs at once, plus SST-2 recipes (3 epochs; the whole
# training set) and [CLS] pooling on SST-2 and MNLI (the plan before, for comparison).
#
#   bash bench/gpu_glue.sh                # data/corpus_mini prepared (make it on the CPU machine)
#
# On a GPU machine, carrying .whl/ (make gpu-wheels) and data/gpu_glue.tar.xz (make gpu-glue-data:
# data/corpus_mini and the GLUE TSVs):
#   tar -xJf data/gpu_glue.tar.xz && python3 bench/gpu_wheels.py install &&
#   export PYTHONPATH=/tmp/site:$PWD GLUE_DIR=data/glue && bash bench/gpu_glue.sh
#
# Environment: RUN (the runs, default runs/gpu_glue), OUT (what to keep, default $RUN/out),
# GLUE_DIR (GLUE TSV files, default ../shared/data/glue), STEPS (pretraining steps, default
# 10000), PRETRAIN_SECONDS (pretraining is stopped, with a checkpoint, after this long; default
# 330), PY (default python3), and for a small smoke run PRETRAIN_ARGS (config overrides) and
# GLUE_ARGS (glue_experiment.py arguments), appended last. OUT receives at most 8 files: the
# encoder as a bf16 release bundle (tar), pretraining metrics, the probes, four GLUE summaries
# and this script's log. A failed stage does not stop the others; the log's last line names each
# one that failed, and the exit code is then 1.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RUN=${RUN:-runs/gpu_glue}
OUT=${OUT:-$RUN/out}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
export PYTHONUNBUFFERED=1
start=$SECONDS
stamp() { echo "== $(( SECONDS - start )) s: $*"; }
failed=()
fail() { failed+=("$1"); stamp "FAILED: $1"; }

experiment() {  # NAME, then glue_experiment.py arguments; keeps its summary in OUT
    local name=$1; shift
    rm -rf "${RUN:?}/$name"
    "$PY" bench/glue_experiment.py --pretrained "$RUN" --out "$RUN/$name" --glue-dir "$GLUE_DIR" \
        "$@" ${GLUE_ARGS:-} > "$RUN/$name.txt" 2>&1
    local rc=$?
    cat "$RUN/$name.txt"
    if ! cp "$RUN/$name/summary.json" "$OUT/${name}_summary.json" 2>/dev/null; then
        echo "$name wrote no summary.json"; [ $rc != 0 ] || rc=1
    fi
    [ $rc = 0 ] || tail -n 5 "$RUN/$name"/*.log
    return $rc
}

main() {
    stamp "pretraining ${STEPS:-10000} steps (stopped after ${PRETRAIN_SECONDS:-330} s at most)"
    # SIGTERM makes the run save a checkpoint and stop; `timeout` then exits 124, as expected.
    # ${PRETRAIN_ARGS} is unquoted on purpose: several overrides.
    timeout -s TERM "${PRETRAIN_SECONDS:-330}" "$PY" -m bertjax.train \
        configs/pretrain_mini_gpu.yaml 'data.sources=[]' "train.steps=${STEPS:-10000}" \
        "train.run_dir=$RUN" train.log_every=500 ${PRETRAIN_ARGS:-} 2>&1  # a log: plain lines
    ls "$RUN/checkpoints" > /dev/null || { fail "pretraining (no checkpoint)"; return 1; }
    cp "$RUN/metrics.jsonl" "$OUT/pretrain_metrics.jsonl"

    stamp "release bundle (bf16), order probe, SST-2 linear probe"
    rm -rf "$RUN/bundle"
    "$PY" -m bertjax.export "$RUN" "$RUN/bundle" --dtype bfloat16 &&
        tar -C "$RUN" -cf "$OUT/mini_bundle.tar" bundle || fail export
    "$PY" bench/order_probe.py "$RUN" 2>&1 | tee "$OUT/probes.txt" || fail "order probe"
    "$PY" bench/linear_probe.py "$RUN" --task sst2 --glue-dir "$GLUE_DIR" 2>&1 |
        tee -a "$OUT/probes.txt" || fail "linear probe"

    stamp "GLUE: the plan (5 tasks x 2 inits) and three variants, all at once"
    # An MLM-only encoder never trains [CLS] (log.md, session 7): the plan is mean-pooled.
    local mean=(--override glue.pooling=mean)
    local -A jobs  # name -> pid
    experiment glue_plan --jobs 10 "${mean[@]}" & jobs[glue_plan]=$!
    experiment sst2_3epochs --tasks sst2 --jobs 2 --override glue.epochs=3 "${mean[@]}" &
    jobs[sst2_3epochs]=$!
    experiment sst2_full --tasks sst2 --jobs 2 --override glue.max_train_examples=null \
        "${mean[@]}" & jobs[sst2_full]=$!
    experiment cls_sst2_mnli --tasks sst2 mnli --jobs 4 & jobs[cls_sst2_mnli]=$!
    for name in glue_plan sst2_3epochs sst2_full cls_sst2_mnli; do
        wait "${jobs[$name]}" || fail "GLUE $name"
    done
    local list; list=$(IFS=,; echo "${failed[*]}")
    [ ${#failed[@]} = 0 ] || { stamp "done; failed: ${list//,/, }"; return 1; }
    stamp "done"
}

mkdir -p "$OUT"
main 2>&1 | tee "$OUT/session.log"
