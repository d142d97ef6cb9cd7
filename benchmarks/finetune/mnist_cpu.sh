#!/usr/bin/env bash
# Public pretraining + DP fine-tuning vs training from scratch at the same epsilon and compute, on 2 CPU cores,
# and the ablations of K and of biased timestep sampling. One heavy job at a time, in this order.
#   bash benchmarks/finetune/mnist_cpu.sh OUT_DIR [PHASE ...]   (phases: main ablations)
# Needs MNIST (DPDIFFUSION_DATA_DIR) and the Inception detector (DPDIFFUSION_INCEPTION). Summarise with
#   python benchmarks/finetune/summarise.py OUT_DIR
set -euo pipefail
out=${1:?usage: mnist_cpu.sh OUT_DIR [PHASE ...]}; shift
phases=${*:-main ablations}
dp() { python -m dpdiffusion "$@"; }
train() {  # NAME CONFIG [--set ...]: train once (resume an unfinished run), timing it
  local name=$1; shift
  if [ -f "$out/$name/release/model.safetensors" ]; then return; fi
  local resume=(); if [ -d "$out/$name/owner" ]; then resume=(--resume); fi
  local start=$SECONDS
  dp train "$@" --run-dir "$out/$name" "${resume[@]}" 2>"$out/$name.train.err" | tail -1
  echo "{\"train_seconds\": $((SECONDS - start))}" >"$out/$name.time.json"
}
evaluate() {  # NAME: 2,000 samples (Heun 18); FID and precision/recall on 1,000 vs 1,000; DPDM's CNN, 20 epochs
  local name=$1
  if [ -f "$out/$name/evaluation/metrics.json" ]; then return; fi
  dp evaluate "$out/$name" --num 2000 --fid-num 1000 --ref-num 1000 --pr-num 1000 --classifiers cnn --epochs 20 \
    --no-ceiling --out "$out/$name/evaluation" 2>"$out/$name.eval.err" | tail -2
}
mkdir -p "$out"
public_i="$out/ft-mnist/public/model.safetensors"
# Scratch controls get the fine-tuned run's whole compute (public pretraining + DP fine-tuning) as DP steps,
# measured: 340 steps for (i), 260 for (ii); their learning rate and EMA are those of mnist-eps10-cpu, their
# noise levels the parameterisation's own (biased sampling is for a pretrained start).
scratch=(--set pretrain.data=null --set 'diffusion.time_bands=[]' --set 'diffusion.time_weights=[]'
         --set training.lr=1.0e-3 --set training.ema_decay=0.995)
for phase in $phases; do
  case $phase in
    main)
      train ft-mnist finetune-mnist-eps1-cpu
      train ft-digits finetune-digits-to-mnist-eps1-cpu
      train scratch-mnist50k finetune-mnist-eps1-cpu "${scratch[@]}" --set privacy.steps=340
      train scratch-mnist60k finetune-digits-to-mnist-eps1-cpu "${scratch[@]}" --set privacy.steps=260
      for name in ft-mnist scratch-mnist50k ft-digits scratch-mnist60k; do evaluate $name; done
      ;;
    ablations)  # from (i)'s public model: uniform timesteps, then K = 1, 4, 16 at B 128
      from_public=(--set pretrain.data=null --set "finetune.init=$public_i")
      train ft-mnist-uniform finetune-mnist-eps1-cpu "${from_public[@]}" --set 'diffusion.time_bands=[0, 1000]' \
        --set 'diffusion.time_weights=[1.0]'
      evaluate ft-mnist-uniform
      for k in 1 4 16; do
        train ft-mnist-b128-k$k finetune-mnist-eps1-cpu "${from_public[@]}" --set privacy.batch_size=128 \
          --set privacy.multiplicity=$k
        evaluate ft-mnist-b128-k$k
      done
      ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
