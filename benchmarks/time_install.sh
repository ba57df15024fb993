#!/usr/bin/env bash
# The times the README states: in a fresh virtual environment with torch installed,
# `pip install .` with the defaults (nvcc used when found) and with GNC_CUDA=off, each in
# a clean export of the committed tree (no build cache), then `gnc demo`; with
# TEST_BLOCK=1 also the README's test block (`pip install '.[test]' && pytest python_tests`).
#   bash benchmarks/time_install.sh [WORKDIR]     (default WORKDIR: a new temporary folder)
# Prints one "TIME <step> <seconds>" line per step with the load average at its start.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
py="${PYTHON:-python3}"
unset GNC_CUDA GNC_CUDA_ARCHS || true
mkdir -p "$work"
cd "$work"
rm -rf venv src_auto src_off src_test demo
mkdir -p src_auto src_off src_test demo
for d in src_auto src_off src_test; do git -C "$repo" archive HEAD | tar -x -C "$d"; done
echo "commit $(git -C "$repo" rev-parse --short HEAD), $(nproc) cores, $("$py" --version)"

step() {  # step NAME COMMAND...: run it, print its wall time and the load at its start
  local name=$1; shift
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  local s; s=$(date +%s.%N)
  "$@"
  echo "TIME $name $(echo "$(date +%s.%N) - $s" | bc) s (load $load)"
}

"$py" -m venv venv
. venv/bin/activate
step torch_install pip install -q torch==2.13.0
(cd src_auto && step "pip_install_default(nvcc=$(command -v nvcc >/dev/null && echo yes || echo no))" pip install -q .)
pip uninstall -q -y gnc_ext
(cd src_off && GNC_CUDA=off step pip_install_GNC_CUDA_off pip install -q .)
pip install -q matplotlib scikit-learn
(cd demo && step gnc_demo gnc demo > demo.log)
if [ "${TEST_BLOCK:-0}" = 1 ]; then
  (cd src_test && step readme_test_block bash -c "pip install -q '.[test]' && pytest -q python_tests > pytest.log")
fi
