#!/usr/bin/env bash
# Lint and type-check src/ (ruff, then mypy; both configured in pyproject.toml). Needs the set-up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src
.venv/bin/mypy
