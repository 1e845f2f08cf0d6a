#!/usr/bin/env bash
# Create the project's virtual environment and install conta into it, without ever pulling a
# multi-GB CUDA build of torch onto a machine that has no GPU.
#   usage: scripts/bootstrap.sh VENV_DIR EXTRAS
set -euo pipefail
venv=${1:-.venv}
extras=${2:-crf,coco,caffe,dev}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" install torch                       # a GPU machine gets the regular (CUDA) build
  else
    # A CPU machine: prefer a CPU wheel already on local disk (pip's find-links), else the
    # PyTorch CPU index.
    local_wheel=""
    for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
      for whl in "$dir"/torch-*+cpu-*.whl; do [ -f "$whl" ] && local_wheel=$whl; done
    done
    if [ -n "$local_wheel" ]; then
      "${pip[@]}" install "$local_wheel"
    else
      "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
"${pip[@]}" install -e ".[${extras}]"
