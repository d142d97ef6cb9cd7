#!/usr/bin/env bash
# DP-SAD vs DPDM on MNIST at epsilon 10, CPU scale, same compute, same evaluation; and the paper's non-private
# teacher (labelled: not end-to-end private). One heavy job at a time.
#   bash benchmarks/dpsad/mnist_cpu.sh OUT_DIR [RUN ...]   (runs: dpdm dpsad-dp dpsad-none teacher)
# ("teacher" evaluates dpsad-dp's DP teacher alone, as dpsad-dp-teacher: what distillation starts from)
# Needs MNIST (DPDIFFUSION_DATA_DIR) and the Inception detector (DPDIFFUSION_INCEPTION). Summarise with
#   python benchmarks/finetune/summarise.py OUT_DIR
set -euo pipefail
out=${1:?usage: mnist_cpu.sh OUT_DIR [RUN ...]}; shift
runs=${*:-dpdm dpsad-dp dpsad-none teacher}
dp() { python -m dpdiffusion "$@"; }
mkdir -p "$out"
for name in $runs; do
  if [ "$name" = teacher ]; then
    name=dpsad-dp-teacher
    mkdir -p "$out/$name/release" && cp "$out/dpsad-dp/teacher/release/privacy.json" "$out/$name/release/"
    [ -f "$out/$name/evaluation/metrics.json" ] || dp evaluate "$out/dpsad-dp/teacher" --num 2000 --fid-num 1000 \
      --ref-num 1000 --pr-num 1000 --classifiers cnn --epochs 20 --no-ceiling --out "$out/$name/evaluation" \
      2>"$out/$name.eval.err" | tail -2
    continue
  fi
  case $name in
    dpdm) args=(mnist-eps10-cpu) ;;
    dpsad-dp) args=(dpsad-mnist-eps10-cpu) ;;
    dpsad-none) args=(dpsad-mnist-eps10-cpu --set dpsad.teacher=none --allow-non-private-teacher) ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
  if [ ! -f "$out/$name/release/model.safetensors" ]; then
    resume=(); if [ -d "$out/$name/owner" ] || [ -d "$out/$name/teacher" ]; then resume=(--resume); fi
    start=$SECONDS
    dp train "${args[@]}" --run-dir "$out/$name" "${resume[@]}" 2>"$out/$name.train.err" | tail -2
    echo "{\"train_seconds\": $((SECONDS - start))}" >"$out/$name.time.json"
  fi
  if [ ! -f "$out/$name/evaluation/metrics.json" ]; then
    dp evaluate "$out/$name" --num 2000 --fid-num 1000 --ref-num 1000 --pr-num 1000 --classifiers cnn --epochs 20 \
      --no-ceiling --out "$out/$name/evaluation" 2>"$out/$name.eval.err" | tail -2
  fi
done
