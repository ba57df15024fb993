#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU and no internet (python 3.12,
# torch with CUDA, nvcc, pybind11, scikit-build-core, cmake, ninja, pytest, hypothesis
# preinstalled). Builds for sm_90, runs the CUDA tests and the GPU benchmarks, writes
# everything under $OUT (default ./out), and prints a short table last.
# Budget: must finish in 8 minutes; each stage has its own timeout.
#
#   bash scripts/device_check.sh                # full check
#   BENCH=0 bash scripts/device_check.sh        # build + tests only
#   BENCH=quick bash scripts/device_check.sh    # tests + the headline benchmark cases
#   TESTS=0 ONLY_BENCH=bench_loss bash scripts/device_check.sh
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
if [ -n "${PREBUILT:-}" ]; then
  # a _C module built by an earlier run of this script on the same image (it copies
  # the one it builds to $OUT): used in place, skipping the build
  cp "$PREBUILT" gnc_ext/ && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  note "build: skipped, using $PREBUILT"
elif GNC_CUDA=on GNC_CUDA_ARCHS=${GNC_CUDA_ARCHS:-90} timeout $(cap 300) python3 -m pip install -q --no-build-isolation . > "$OUT/build.log" 2>&1; then
  note "build: ok ($(( $(date +%s) - t0 )) s)"
  so=$(cd /tmp && python3 -c "import gnc_ext._C as m; print(m.__file__)" 2>/dev/null) && cp "$so" "$FINAL_OUT/"
else
  note "build: FAILED (see build.log)"; tail -30 "$OUT/build.log"; cp "$OUT/build.log" "$FINAL_OUT/"; printf '%s\n' "${summary[@]}"; exit 1
fi
# pytest must import the installed package, not the source folder in the working
# directory (it has no compiled _C): python3 -P does not put the cwd on sys.path.
PYP="python3 -P"
[ -n "${PREBUILT:-}" ] && PYP=python3
(cd /tmp && python3 -c "import gnc_ext, json; print(json.dumps(gnc_ext.build_info()))") > "$OUT/build_info.json" 2>&1
note "build_info: $(cat "$OUT/build_info.json" | head -c 300)"

# CUDA tests: every test carrying the `cuda` pytest marker (the cuda case of the
# `device` fixture and every test taking `cuda_device`; see python_tests/conftest.py).
# One pytest process per test file, so that a kernel fault
# (which poisons the CUDA context) costs only that file's results; no -x: every
# failure is listed. TESTS=0 skips this stage.
PYT_TIMEOUT=""
python3 -c "import pytest_timeout" 2>/dev/null && PYT_TIMEOUT="--timeout=120"
if [ "${TESTS:-1}" = "1" ]; then
  for f in ${TEST_FILES:-test_normalize test_hull test_certified_argmax test_loss test_sce_stored test_metrics test_nn test_cmf test_tammes test_ufm}; do
    CUDA_LAUNCH_BLOCKING=${TEST_LAUNCH_BLOCKING:-0} timeout "$(cap "${TEST_CAP:-120}")" $PYP -m pytest -q -rfE --tb=short $PYT_TIMEOUT python_tests/$f.py -m cuda \
      -p no:cacheprovider > "$OUT/tests_cuda_$f.log" 2>&1
    rc=$?
    note "cuda tests $f: rc=$rc, $(tail -1 "$OUT/tests_cuda_$f.log")"
  done
fi

# name | seconds cap | command line. BENCH=0: none; BENCH=quick: the headline cases
# only; BENCH=1 (default): all. ONLY_BENCH=name1,name2 picks some.
BENCH=${BENCH:-1}
if [ "$BENCH" != "0" ]; then
  if [ "$BENCH" = "final" ]; then  # a short last run: the headline case of each family
    benches="bench_hull|45|python3 benchmarks/bench_hull.py --device cuda --cap 5 --cases 10000x512,100000x512 --out $OUT
softmax_large|60|python3 benchmarks/bench_softmax_large.py --device cuda --d 512 --K 10000 --restarts 2 --max-iter 300 --time-limit 30 --out $OUT
bench_metrics|50|python3 benchmarks/bench_metrics.py --device cuda --out $OUT
bench_epilogues|20|python3 benchmarks/bench_epilogues.py --out $OUT
bench_loss|60|python3 benchmarks/bench_loss.py --device cuda --only 'CE B=512, d=512, K=1000000, bfloat16;HardMax B=512, d=512, K=1000000, float32' --out $OUT"
  elif [ "$BENCH" = "quick" ]; then
    benches="gpu_profile|40|python3 scripts/gpu_profile.py --out $OUT
bench_normalize|20|python3 benchmarks/bench_normalize.py --device cuda --out $OUT
bench_epilogues|20|python3 benchmarks/bench_epilogues.py --out $OUT
bench_loss|70|python3 benchmarks/bench_loss.py --device cuda --only K=1000000 --out $OUT
bench_metrics|45|python3 benchmarks/bench_metrics.py --device cuda --out $OUT
bench_hull|45|python3 benchmarks/bench_hull.py --device cuda --cap 5 --cases 10000x512,100000x512 --no-scaling --out $OUT"
  else
    benches="gpu_profile|40|python3 scripts/gpu_profile.py --out $OUT
bench_normalize|30|python3 benchmarks/bench_normalize.py --device cuda --out $OUT
bench_epilogues|20|python3 benchmarks/bench_epilogues.py --out $OUT
bench_loss|130|python3 benchmarks/bench_loss.py --device cuda --out $OUT
bench_metrics|50|python3 benchmarks/bench_metrics.py --device cuda --out $OUT
bench_hull|90|python3 benchmarks/bench_hull.py --device cuda --cap 5 --cases 2000x64,10000x512,100000x512 --out $OUT
softmax_large|80|python3 benchmarks/bench_softmax_large.py --device cuda --d 512 --K 10000 --restarts 2 --max-iter 300 --time-limit 40 --out $OUT"
  fi
  while IFS='|' read -r name secs cmd; do
    [ -z "$name" ] && continue
    if [ -n "${ONLY_BENCH:-}" ] && [[ ",$ONLY_BENCH," != *",$name,"* ]]; then continue; fi
    if timeout "$(cap "$secs")" bash -c "$cmd" > "$OUT/$name.log" 2>&1; then
      note "$name: ok"
    else
      note "$name: FAILED or timed out (rc=$?), see $name.log"
    fi
  done <<< "$benches"
fi

# compute-sanitizer memcheck over the loss family's CUDA tests (SANITIZE=0 skips)
if [ "${SANITIZE:-1}" = "1" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  timeout "$(cap 120)" compute-sanitizer --tool memcheck --error-exitcode 9 $PYP -m pytest -q -rfE --tb=short \
    python_tests/test_sce_stored.py python_tests/test_loss.py -m cuda -p no:cacheprovider > "$OUT/sanitizer_loss.log" 2>&1
  rc=$?
  note "compute-sanitizer memcheck, loss CUDA tests: rc=$rc (0 clean, 9 errors found), $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer_loss.log" | tail -1)"
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
