#!/usr/bin/env bash
# Empirical privacy audit on MNIST, CPU scale: the DP preset `mnist-eps10-cpu` trained with 1,000 canaries, and
# non-private controls of the same network (no clipping, no noise, trained to overfit): `control` (128 images +
# 128 canaries, every example in every step, 800 steps at Adam 3e-3) and `control-512` (512 images + 256
# canaries, B 256, 600 steps at 1e-3: a milder overfit).
# Each run is trained, then audited (membership inference + the one-run canary bound). One heavy job at a time.
#   bash benchmarks/audit/mnist_cpu.sh OUT_DIR [RUN ...]   (runs: dp control control-512)
# Needs MNIST (DPDIFFUSION_DATA_DIR). The audit reports land in OUT_DIR/<run>/owner/audit/ (they read private
# data without noise and stay with the data owner); the figures are copied into benchmarks/results by hand.
set -euo pipefail
out=${1:?usage: mnist_cpu.sh OUT_DIR [RUN ...]}; shift
runs=${*:-dp control control-512}
dp() { python -m dpdiffusion "$@"; }
mkdir -p "$out"
for name in $runs; do
  case $name in
    dp) args=(mnist-eps10-cpu --audit-canaries 1000); audit=(--members 1000) ;;
    control) args=(mnist-eps10-cpu --audit-canaries 128 --set data.subset=0:128 --set privacy.target_epsilon=null
                   --set privacy.noise_multiplier=0 --set privacy.max_grad_norm=inf --set privacy.batch_size=128
                   --set privacy.steps=800 --set training.lr=3.0e-3 --set training.ema_decay=0
                   --set diffusion.label_dropout=0 --set training.checkpoint_every=800)
             audit=(--members 128) ;;
    control-512) args=(mnist-eps10-cpu --audit-canaries 256 --set data.subset=0:512 --set privacy.target_epsilon=null
                   --set privacy.noise_multiplier=0 --set privacy.max_grad_norm=inf --set privacy.batch_size=256
                   --set privacy.steps=600 --set training.ema_decay=0 --set training.checkpoint_every=600)
             audit=(--members 512) ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
  if [ ! -f "$out/$name/release/model.safetensors" ]; then
    resume=(); if [ -d "$out/$name/owner" ]; then resume=(--resume); fi
    start=$SECONDS
    dp train "${args[@]}" --run-dir "$out/$name" "${resume[@]}" 2>"$out/$name.train.err" | tail -2
    echo "{\"train_seconds\": $((SECONDS - start))}" >"$out/$name.time.json"
  fi
  if [ ! -f "$out/$name/owner/audit/report.json" ]; then
    start=$SECONDS
    dp audit "$out/$name" "${audit[@]}" --json >"$out/$name.audit.json" 2>"$out/$name.audit.err"
    echo "{\"audit_seconds\": $((SECONDS - start))}" >"$out/$name.audit-time.json"
  fi
done
