#!/usr/bin/env bash
# The utility measurements on 2 CPU cores, in the order they were run (one heavy job at a time). Results land in
# benchmarks/results/utility_*.{json,md,png}; `python benchmarks/utility.py --table ...` prints them as one table.
#   bash benchmarks/utility_cpu.sh PHASE [RUNS_DIR]     PHASE: baseline | nfe | guidance | search-digits | search-mnist
#                                                        | warmup-mnist
# Needs MNIST (DPDIFFUSION_DATA_DIR) and the Inception detector (DPDIFFUSION_INCEPTION).
set -euo pipefail
phase=${1:?usage: utility_cpu.sh PHASE [RUNS_DIR]}
runs=${2:-runs}
here=$(dirname "$0")
utility() { python "$here/utility.py" "$@"; }
case $phase in
  baseline)  # the shipped mnist-eps10-cpu before the search: trained once, reused by the sampler phases
    utility mnist-eps10-cpu --quick --run-dir "$runs/m10-base" ;;
  nfe)  # one trained model, quick protocol: DPM-Solver++(2M) at 6 / 10 / 18 / 35 NFE against Heun 18 (35 NFE)
    for s in "dpmpp2m 10" "dpmpp2m 6" "dpmpp2m 18" "heun 18" "dpmpp2m 35"; do
      set -- $s
      utility mnist-eps10-cpu --run-dir "$runs/m10-base" --quick --sampler "$1" --steps "$2"
    done ;;
  guidance)  # classifier-free guidance weight at sampling (w = 1: conditional only)
    for w in 2 3; do utility mnist-eps10-cpu --run-dir "$runs/m10-base" --quick --sampler dpmpp2m --steps 10 --guidance "$w"; done ;;
  search-digits)  # the demo: 5 minutes of DP training per candidate
    python "$here/recipe_search.py" digits-eps10-cpu --candidates "$here/recipes/digits_cpu.yaml" --budget-min 5 \
      --quick --runs "$runs/search" ;;
  search-mnist)  # 60 minutes of DP training per candidate
    python "$here/recipe_search.py" mnist-eps10-cpu --candidates "$here/recipes/mnist_cpu.yaml" --budget-min 60 \
      --quick --runs "$runs/search" ;;
  warmup-mnist)  # issue 23, full protocol, about 60 minutes of training each: the DP warm-up against DPDM alone at the
    # same total epsilon and compute (DPDM alone gets the warm-up's ~6 minutes as extra DP-SGD steps)
    utility feta-mnist-eps10-cpu --run-dir "$runs/feta-m10"
    utility mnist-eps10-cpu --name mnist-eps10-cpu-60min --set privacy.steps=1470 --run-dir "$runs/m10-60min"
    utility feta-mnist-eps10-cpu --name feta-mnist-eps10-cpu-frequency --run-dir "$runs/feta-m10-frequency" \
      --set warmup.frequency_features=2048 --set warmup.frequency_noise_ratio=3.0 --set warmup.generator_steps=500
    utility feta-mnist-eps1-cpu --run-dir "$runs/feta-m1"
    utility mnist-eps1-cpu --name mnist-eps1-cpu-60min --set privacy.steps=1470 --run-dir "$runs/m1-60min"
    utility feta-mnist-eps1-cpu --name feta-mnist-eps1-cpu-frequency --run-dir "$runs/feta-m1-frequency" \
      --set warmup.frequency_features=2048 --set warmup.frequency_noise_ratio=3.0 --set warmup.generator_steps=500 ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
