#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the embedded demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dpdiffusion privacy --epsilon 10 --delta 1e-5 --sample-rate 0.0667 --steps 4500 "$@"
