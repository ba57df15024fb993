#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU and no internet (python 3.12,
# torch with CUDA, nvcc, pybind11, scikit-build-core, cmake, ninja, pytest, hypothesis
# preinstalled). Builds for sm_90, runs the CUDA tests and the GPU benchmarks, writes
# everything under $OUT (default ./out), and prints a short table last.
# Budget: must finish in 8 minutes; each stage has its own timeout.
#
#   bash scripts/device_check.sh            # full check
#   BENCH=0 bash scripts/device_check.sh    # build + tests only
set -uo pipefail
cd "$(dirname "$0")/.."
# Results come back from $OUT (at most 8 files): everything is written to a work
# folder, then packed into $OUT/device_check.tgz, with the summary in $OUT/summary.md.
FINAL_OUT=${OUT:-$PWD/out}
OUT=/tmp/gnc_device_check
rm -rf "$OUT"; mkdir -p "$OUT" "$FINAL_OUT"
export PYTHONUNBUFFERED=1
summary=()
note() { summary+=("$1"); echo "== $1"; }
# Whole-script budget (seconds): every stage's timeout is capped by what is left.
BUDGET=${BUDGET:-470}
T_START=$(date +%s)
cap() { local left=$(( BUDGET - ($(date +%s) - T_START) )); [ "$left" -lt 5 ] && left=5; [ "$1" -lt "$left" ] && echo "$1" || echo "$left"; }

# Optional peer wheels (cut-cross-entropy, liger-kernel) carried in .whl/
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
note "gpu: $(head -1 "$OUT/gpu.txt")"

t0=$(date +%s)
if GNC_CUDA=on GNC_CUDA_ARCHS=${GNC_CUDA_ARCHS:-90} timeout $(cap 300) python3 -m pip install -q --no-build-isolation . > "$OUT/build.log" 2>&1; then
  note "build: ok ($(( $(date +%s) - t0 )) s)"
else
  note "build: FAILED (see build.log)"; tail -30 "$OUT/build.log"; cp "$OUT/build.log" "$FINAL_OUT/"; printf '%s\n' "${summary[@]}"; exit 1
fi
(cd /tmp && python3 -c "import gnc_ext, json; print(json.dumps(gnc_ext.build_info()))") > "$OUT/build_info.json" 2>&1
note "build_info: $(cat "$OUT/build_info.json" | head -c 300)"

# CUDA tests: every test parametrised over devices, run for the cuda ids, plus the
# explicit CUDA-vs-CPU tests.
timeout $(cap 200) python3 -m pytest -q -x python_tests -k "cuda" -p no:cacheprovider > "$OUT/tests_cuda.log" 2>&1
rc=$?
note "cuda tests: rc=$rc, $(tail -1 "$OUT/tests_cuda.log")"
# the loss family's CUDA tests again with the opt-in fused forward/backward kernels as
# the defaults (gnc_ext.ops.loss.CUDA_FORWARD / CUDA_BACKWARD)
GNC_LOSS_CUDA_FORWARD=fused GNC_LOSS_CUDA_BACKWARD=fused timeout $(cap 90) python3 -m pytest -q -x \
  python_tests/test_loss.py -k "cuda" -p no:cacheprovider > "$OUT/tests_cuda_loss_fused.log" 2>&1
rc=$?
note "cuda loss tests (fused kernels as default): rc=$rc, $(tail -1 "$OUT/tests_cuda_loss_fused.log")"

if [ "${BENCH:-1}" = "1" ]; then
  # name | seconds cap | command line (each capped so the whole script fits in 8 minutes)
  while IFS='|' read -r name secs cmd; do
    [ -z "$name" ] && continue
    if timeout "$(cap "$secs")" bash -c "$cmd" > "$OUT/$name.log" 2>&1; then
      note "$name: ok"
    else
      note "$name: FAILED or timed out (rc=$?), see $name.log"
    fi
  done <<EOF2
bench_normalize|75|python3 benchmarks/bench_normalize.py --device cuda --out $OUT
bench_loss|75|python3 benchmarks/bench_loss.py --device cuda --out $OUT
bench_metrics|75|python3 benchmarks/bench_metrics.py --device cuda --out $OUT
bench_hull|75|python3 benchmarks/bench_hull.py --device cuda --cap 10 --out $OUT
softmax_large|100|python3 benchmarks/bench_softmax_large.py --device cuda --d 512 --K 10000 --restarts 2 --max-iter 300 --time-limit 45 --out $OUT
EOF2
fi

{
  echo "# device_check $(date -u +%Y-%m-%dT%H:%MZ)"
  printf -- '- %s\n' "${summary[@]}"
  for f in "$OUT"/*.md; do [ -f "$f" ] && [ "$(basename "$f")" != summary.md ] && { echo; cat "$f"; }; done
} > "$OUT/summary.md"
cp "$OUT/summary.md" "$FINAL_OUT/summary.md"
tar czf "$FINAL_OUT/device_check.tgz" -C "$OUT" .
echo
echo "================ device_check summary ================"
cat "$OUT/summary.md"
