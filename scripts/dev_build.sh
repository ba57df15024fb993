#!/usr/bin/env bash
# In-tree development build: compiles gnc_ext._C with CMake into build/dev-<cuda> and
# copies it next to the Python sources, so `PYTHONPATH=$PWD pytest python_tests` tests
# the working tree without reinstalling. Users install with `pip install .` instead.
#   GNC_CUDA=off|on|auto (default off here: fast), GNC_CUDA_ARCHS (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mode=${GNC_CUDA:-off}
bdir=build/dev-$mode
mkdir -p build
cmake -S . -B "$bdir" -G Ninja -DGNC_CUDA="$mode" -DGNC_CUDA_ARCHS="${GNC_CUDA_ARCHS:-90}" \
  -DCMAKE_BUILD_TYPE=Release -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v $PY)" >"$bdir.configure.log" 2>&1 || { cat "$bdir.configure.log"; exit 1; }
cmake --build "$bdir" -j"$(nproc)"
cp "$bdir"/_C*.so gnc_ext/
echo "built $(ls gnc_ext/_C*.so) (GNC_CUDA=$mode)"
