#!/usr/bin/env bash
# Set up aelab in ./.venv (made if missing). With --test, also the test tools and, as root on
# Debian/Ubuntu, the headless Chromium that the browser test uses and Debian's Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: aelab needs Python 3.10 or newer (set PYTHON=/path/to/python3.x)" >&2
  exit 2
fi
pip_install() {  # quiet on success; on failure show pip's output and stop
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2
    echo "setup: pip install $* failed (output above)" >&2
    exit 1
  fi
  rm -f "$log"
}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip_install --upgrade pip

extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
  # as root on Debian: the headless browser, and Fashion-MNIST's offline source (Debian's package)
  missing=""
  command -v chromium >/dev/null 2>&1 || missing=" chromium"
  [ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
  if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing$missing with apt-get" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
# PyTorch's CUDA build takes about 6 GiB in .venv, and pip unpacks it first: say so before pip runs out of disk
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  free_gb=$(df -Pk . 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}') || free_gb=""
  if [ -n "$free_gb" ] && [ "$free_gb" -lt 8 ]; then
    echo "setup: only ${free_gb} GiB free here; PyTorch and its libraries need about 8 GiB" \
         "(free some disk, or set up elsewhere)" >&2
  fi
fi
# pip resolves torch/torchvision from a local copy where the machine has one (see docs/development.md)
echo "setup: installing aelab and its dependencies into .venv (PyTorch takes a minute or two) ..." >&2
pip_install -e ".${extras}"
.venv/bin/python -c 'import aelab, torch; print(f"setup: aelab {aelab.__version__} with torch {torch.__version__} in .venv")'
