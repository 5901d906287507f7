#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine (Python 3.11, pip, apt) and runs the
# test command from README.md. Optional extras make more tests run instead of skip:
# Debian's dataset-fashion-mnist (full-data tests), PyTorch 2.13 CPU (reference tests),
# Open MPI + mpi4py (distributed tests), onnx + onnxruntime (ONNX export tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "ci: dataset-fashion-mnist not installed; full-data tests will skip"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null \
    || echo "ci: Open MPI not installed; distributed tests will skip"
fi

venv=${XPNN_CI_VENV:-/tmp/xpnn-ci-venv}
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q "torch==2.13.0" || echo "ci: torch not installed; PyTorch reference tests will skip"
python -m pip install -q mpi4py || echo "ci: mpi4py not installed; distributed tests will skip"
python -m pip install -q onnx onnxruntime || echo "ci: onnx/onnxruntime not installed; ONNX export tests will skip"

# The README's test command:
pip install -e ".[test]" && python -m pytest -q
