#!/usr/bin/env bash
# Public pretraining + DP fine-tuning vs training from scratch at the same epsilon and compute, on 2 CPU cores,
# and the ablations of K and of biased timestep sampling. One heavy job at a time, in this order.
#   bash benchmarks/finetune/mnist_cpu.sh OUT_DIR [PHASE ...]
# (phases, in this order by default: mnist digits uses timesteps multiplicity shift)
# Needs MNIST (DPDIFFUSION_DATA_DIR) and the Inception detector (DPDIFFUSION_INCEPTION). Summarise with
#   python benchmarks/finetune/summarise.py OUT_DIR
set -euo pipefail
out=${1:?usage: mnist_cpu.sh OUT_DIR [PHASE ...]}; shift
phases=${*:-mnist digits uses timesteps multiplicity shift}
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
public_eval() {  # NAME: the stage-1 model of run NAME alone (no private data), evaluated as above
  local name=$1
  if [ -f "$out/public-$name/evaluation/metrics.json" ]; then return; fi
  mkdir -p "$out/public-$name"
  dp sample "$out/$name/public/model.safetensors" --num 2000 --out "$out/public-$name/samples.npz" 2>/dev/null
  dp evaluate "$out/public-$name/samples.npz" --dataset mnist --fid-num 1000 --ref-num 1000 --pr-num 1000 \
    --classifiers cnn --epochs 20 --no-ceiling --out "$out/public-$name/evaluation" 2>"$out/public-$name.eval.err" | tail -2
}
for phase in $phases; do
  case $phase in
    mnist)  # (i) public = 10k held-out MNIST images, private = the other 50k
      train ft-mnist finetune-mnist-eps1-cpu
      train scratch-mnist50k finetune-mnist-eps1-cpu "${scratch[@]}" --set privacy.steps=340
      for name in ft-mnist scratch-mnist50k; do evaluate $name; done
      public_eval ft-mnist
      ;;
    digits)  # (ii) public = scikit-learn digits upscaled to 28x28, private = MNIST
      train ft-digits finetune-digits-to-mnist-eps1-cpu
      train scratch-mnist60k finetune-digits-to-mnist-eps1-cpu "${scratch[@]}" --set privacy.steps=260
      for name in ft-digits scratch-mnist60k; do evaluate $name; done
      public_eval ft-digits
      ;;
    timesteps)  # from (i)'s public model: uniform DDPM times, and the parameterisation's own levels
      from_public=(--set pretrain.data=null --set "finetune.init=$public_i")
      train ft-mnist-uniform finetune-mnist-eps1-cpu "${from_public[@]}" --set 'diffusion.time_bands=[0, 1000]' \
        --set 'diffusion.time_weights=[1.0]'
      evaluate ft-mnist-uniform
      train ft-mnist-lognormal finetune-mnist-eps1-cpu "${from_public[@]}" --set 'diffusion.time_bands=[]' \
        --set 'diffusion.time_weights=[]'
      evaluate ft-mnist-lognormal
      ;;
    multiplicity)  # from (i)'s public model: K = 1, 4, 16 at B 128 (same epsilon)
      from_public=(--set pretrain.data=null --set "finetune.init=$public_i")
      for k in 1 4 16; do
        # micro-batch 128 / K keeps 128 rows per forward (performance only: 2,048 rows at once ran ~5x slower here)
        train ft-mnist-b128-k$k finetune-mnist-eps1-cpu "${from_public[@]}" --set privacy.batch_size=128 \
          --set privacy.multiplicity=$k --set performance.micro_batch_size=$((128 / k))
        evaluate ft-mnist-b128-k$k
      done
      ;;
    shift)  # (ii) from its public digits model: the same 100 DP steps at Adam 3e-4 (the earlier setting) instead of 1e-3
      train ft-digits-lr3e-4 finetune-digits-to-mnist-eps1-cpu --set pretrain.data=null \
        --set "finetune.init=$out/ft-digits/public/model.safetensors" --set training.lr=3.0e-4
      evaluate ft-digits-lr3e-4
      ;;
    uses)  # growth with the number of synthetic images; classifier ranking on synthetic vs real data
      python "$(dirname "$0")/synthetic_uses.py" "$out/ft-mnist" --counts 1000,10000,60000 --out "$out/uses-ft-mnist.json"
      ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
