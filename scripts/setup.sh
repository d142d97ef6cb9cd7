#!/usr/bin/env bash
# Set up dpdiffusion in ./.venv: create it if missing, install PyTorch, then the package with its test extras.
# On a machine without an NVIDIA GPU it never installs CUDA packages: it checks pip's plan first.
#   DPDIFFUSION_TORCH_VERSION  PyTorch version to install (default 2.13.0)
#   DPDIFFUSION_TORCH_INDEX    package index for PyTorch, e.g. https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

torch_spec="torch==${DPDIFFUSION_TORCH_VERSION:-2.13.0}"
index_args=()
if [ -n "${DPDIFFUSION_TORCH_INDEX:-}" ]; then index_args=(--index-url "$DPDIFFUSION_TORCH_INDEX"); fi

if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found; installing $torch_spec" >&2
    python -m pip install -q "${index_args[@]}" "$torch_spec"
  else
    plan=$(python -m pip install -q --dry-run --ignore-installed --report - "${index_args[@]}" "$torch_spec")
    if printf '%s' "$plan" | grep -qiE '"name": *"nvidia-'; then
      echo "setup: error: no GPU here, but pip would install CUDA packages for $torch_spec;" \
           "set DPDIFFUSION_TORCH_INDEX=https://download.pytorch.org/whl/cpu (or install a CPU build of torch first)" >&2
      exit 1
    fi
    echo "setup: no GPU; installing CPU $torch_spec" >&2
    python -m pip install -q "${index_args[@]}" "$torch_spec"
  fi
fi
python -m pip install -q -e ".[test]"
python -c "import dpdiffusion, torch; print(f'setup: dpdiffusion {dpdiffusion.__version__} with torch {torch.__version__}')" >&2
