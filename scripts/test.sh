#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest (e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Local copies of public data and weights for machines that cannot download (never required).
if [ -z "${DPDIFFUSION_DATA_DIR:-}" ] && [ -d ../shared/data ]; then export DPDIFFUSION_DATA_DIR=$PWD/../shared/data; fi
if [ -z "${DPDIFFUSION_INCEPTION:-}" ] && [ -f ../shared/weights/inception-2015-12-05.pt ]; then
  export DPDIFFUSION_INCEPTION=$PWD/../shared/weights/inception-2015-12-05.pt
fi
exec .venv/bin/python -m pytest "$@"
