#!/usr/bin/env bash
# Set up sonata_nb on a fresh machine: system library for open3d, a virtual environment in .venv,
# torch, every dependency and the package itself (editable, with the dev tools).
#   TORCH_SPEC   torch requirement to install first (default torch==2.13.0: a CPU wheel on these machines;
#                on a CUDA machine use the build that matches your driver)
#   OPEN3D_SPEC  open3d-cpu (default, small) or open3d (CUDA build)
#   VENV         where to create the environment (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
OPEN3D_SPEC=${OPEN3D_SPEC:-open3d-cpu}
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "open3d needs libusb-1.0-0: run 'sudo apt-get install -y libusb-1.0-0'" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# torch first: once it is installed, the plain `torch` requirement of the package installs nothing more
pip install -q "$TORCH_SPEC"
pip install -q "$OPEN3D_SPEC"
pip install -q -e ".[dev]"
# open3d brings dash, whose JupyterLab extension asks for a "Build" at every JupyterLab start; nothing here uses it
"$VENV/bin/jupyter" labextension uninstall --no-build @plotly/dash-jupyterlab >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, spconv.pytorch, open3d, sonata_nb; print('sonata_nb', sonata_nb.__version__, 'torch', torch.__version__, 'ready')" 2>&1 | grep -v -i warn
