#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU and no internet (python 3.12,
# torch with CUDA, nvcc, pybind11, scikit-build-core, cmake, ninja, pytest, hypothesis
# preinstalled). Builds for sm_90, runs every CUDA test, the compute-sanitizer tools, the
# headline benchmarks, writes everything under $OUT (default ./out), and prints one
# closing table last (scripts/device_table.py: each loss strategy's time and peak memory
# at the headline shapes next to torch.compile's, epilogue GB/s against copy_, the metrics
# update against its baseline, one_vs_rest_distance at K = 100k and, when the budget
# leaves room, K = 1M).
#
# Time budget: under 8 minutes from a cold machine, build included (BUDGET, default 470 s
# for the script itself; every stage's timeout is capped by what is left). Estimates
# per stage from the H200 runs of 2026-11-30 (benchmarks/results/device_check_h200_run*
# _summary.md: build 22-30 s; the CUDA test files 1.4-24 s each plus ~5 s of interpreter
# start per process; the bench_loss headline cases ~60 s in run 3):
#     build (pip install, sm_90)                      ~30 s  (cap 150)
#     CUDA tests, one pytest process                  ~90 s  (cap 150; files with failures
#                                                             are rerun alone if time is left)
#     bench_loss, the three headline shapes          ~110 s  (cap 150)
#     bench_epilogues                                 ~10 s  (cap 25)
#     bench_metrics, the update case                  ~15 s  (cap 40)
#     bench_hull, K = 100k                            ~15 s  (cap 40)
#     compute-sanitizer memcheck (stored/loss)        ~60 s  (cap 80)
#     compute-sanitizer racecheck (stored/fold)       ~40 s  (cap 60)
#     compute-sanitizer synccheck (hull)              ~25 s  (cap 40)
#     bench_hull, K = 1M (only with >= 100 s left)   <= 90 s
#     total of the estimates, K = 1M left out        ~395 s
#
#   bash scripts/device_check.sh                # full check
#   BENCH=0 bash scripts/device_check.sh        # build + tests + sanitizers only
#   BENCH=full bash scripts/device_check.sh     # every benchmark case (longer than the budget)
#   TESTS=0 ONLY_BENCH=bench_loss bash scripts/device_check.sh
#   SANITIZE=0 / HULL_1M=0                      # skip the sanitizers / the K = 1M case
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
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
elif GNC_CUDA=on GNC_CUDA_ARCHS=${GNC_CUDA_ARCHS:-90} timeout "$(cap 150)" python3 -m pip install -q --no-build-isolation . > "$OUT/build.log" 2>&1; then
  note "build: ok ($(( $(date +%s) - t0 )) s)"
  so=$(cd /tmp && python3 -c "import gnc_ext._C as m; print(m.__file__)" 2>/dev/null) && cp "$so" "$FINAL_OUT/"
else
  note "build: FAILED (see build.log)"; tail -30 "$OUT/build.log"; cp "$OUT/build.log" "$FINAL_OUT/"; printf '%s\n' "${summary[@]}"; exit 1
fi
# pytest must import the installed package, not the source folder in the working
# directory (it has no compiled _C): python3 -P does not put the cwd on sys.path.
PYP=(python3 -P)
[ -n "${PREBUILT:-}" ] && PYP=(python3)
(cd /tmp && python3 -c "import gnc_ext, json; print(json.dumps(gnc_ext.build_info()))") > "$OUT/build_info.json" 2>&1
note "build_info: $(cat "$OUT/build_info.json" | head -c 300)"

# CUDA tests: every test carrying the `cuda` pytest marker (the cuda case of the
# `device` fixture and every test taking `cuda_device`; see python_tests/conftest.py),
# all files in one pytest process (one interpreter start). A kernel fault poisons the
# CUDA context for the rest of that process, so when some fail, each file with failures
# is rerun alone (time permitting) to tell its own failures from the poisoned ones. No -x:
# every failure is listed. TESTS=0 skips this stage.
PYT_TIMEOUT=()
python3 -c "import pytest_timeout" 2>/dev/null && PYT_TIMEOUT=(--timeout=120)
CUDA_TEST_FILES=${TEST_FILES:-test_cuda_paths test_normalize test_hull test_certified_argmax test_loss test_sce_stored test_metrics test_nn test_cmf test_tammes test_ufm}
if [ "${TESTS:-1}" = "1" ]; then
  paths=(); for f in $CUDA_TEST_FILES; do paths+=("python_tests/$f.py"); done
  CUDA_LAUNCH_BLOCKING=${TEST_LAUNCH_BLOCKING:-0} timeout "$(cap "${TEST_CAP:-150}")" "${PYP[@]}" -m pytest -q -rfE --tb=short \
    "${PYT_TIMEOUT[@]}" "${paths[@]}" -m cuda -p no:cacheprovider > "$OUT/tests_cuda.log" 2>&1
  rc=$?
  note "cuda tests (all files, one process): rc=$rc, $(tail -1 "$OUT/tests_cuda.log")"
  if [ "$rc" != "0" ]; then
    while read -r f; do
      [ -z "$f" ] && continue
      b=$(basename "$f" .py)
      timeout "$(cap 60)" "${PYP[@]}" -m pytest -q -rfE --tb=short "${PYT_TIMEOUT[@]}" "$f" -m cuda -p no:cacheprovider \
        > "$OUT/tests_cuda_$b.log" 2>&1 < /dev/null
      note "  rerun alone $b: rc=$?, $(tail -1 "$OUT/tests_cuda_$b.log")"
    done < <(grep -oE '^(FAILED|ERROR) python_tests/test_[a-z0-9_]+\.py' "$OUT/tests_cuda.log" | awk '{print $2}' | sort -u)
  fi
fi

# name | seconds cap | command line. BENCH=0: none; BENCH=1 (default): the cases of the
# closing table; BENCH=full: every case of every benchmark (beyond the 8-minute budget).
# ONLY_BENCH=name1,name2 picks some.
BENCH=${BENCH:-1}
HEADLINE='CE B=512, d=512, K=1000000, bfloat16;CE B=8192, d=2048, K=131072, bfloat16;HardMax B=512, d=512, K=1000000, bfloat16'
run_benches() {
  while IFS='|' read -r name secs cmd; do
    [ -z "$name" ] && continue
    if [ -n "${ONLY_BENCH:-}" ] && [[ ",$ONLY_BENCH," != *",$name,"* ]]; then continue; fi
    if timeout "$(cap "$secs")" bash -c "$cmd" > "$OUT/$name.log" 2>&1; then
      note "$name: ok"
    else
      note "$name: FAILED or timed out (rc=$?), see $name.log"
    fi
  done <<< "$1"
}
if [ "$BENCH" = "full" ]; then
  run_benches "gpu_profile|40|python3 scripts/gpu_profile.py --out $OUT
bench_normalize|30|python3 benchmarks/bench_normalize.py --device cuda --out $OUT
bench_epilogues|20|python3 benchmarks/bench_epilogues.py --out $OUT
bench_loss|300|python3 benchmarks/bench_loss.py --device cuda --out $OUT
bench_metrics|50|python3 benchmarks/bench_metrics.py --device cuda --out $OUT
bench_hull|90|python3 benchmarks/bench_hull.py --device cuda --cap 5 --cases 2000x64,10000x512,100000x512 --out $OUT
softmax_large|80|python3 benchmarks/bench_softmax_large.py --device cuda --d 512 --K 10000 --restarts 2 --max-iter 300 --time-limit 40 --out $OUT"
elif [ "$BENCH" != "0" ]; then
  run_benches "bench_loss|150|python3 benchmarks/bench_loss.py --device cuda --only '$HEADLINE' --out $OUT
bench_epilogues|25|python3 benchmarks/bench_epilogues.py --out $OUT
bench_metrics|40|python3 benchmarks/bench_metrics.py --device cuda --only 'update K=100k' --out $OUT
bench_hull|40|python3 benchmarks/bench_hull.py --device cuda --cap 5 --cases 100000x512 --no-scaling --out $OUT"
fi

# compute-sanitizer (SANITIZE=0 skips): memcheck over the stored/loss CUDA tests, racecheck
# (shared-memory hazards) over the stored-exponent and fold epilogues at sizes it can
# afford (the 70,001-row "tall" cases left out), synccheck (__syncthreads/__syncwarp use) over the
# hull solver's warp team. --error-exitcode 9: rc 9 means the tool reported errors.
sanitize() {  # name cap tool pytest-args...
  local name=$1 secs=$2 tool=$3; shift 3
  timeout "$(cap "$secs")" compute-sanitizer --tool "$tool" --error-exitcode 9 "${PYP[@]}" -m pytest -q -rfE --tb=short \
    -p no:cacheprovider "$@" > "$OUT/sanitizer_$name.log" 2>&1
  local rc=$?
  note "compute-sanitizer $tool, $name: rc=$rc (0 clean, 9 errors found, 124 timed out), $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$name.log" | tail -1)"
}
if [ "${SANITIZE:-1}" = "1" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  sanitize memcheck_stored_loss 80 memcheck python_tests/test_sce_stored.py python_tests/test_loss.py \
    python_tests/test_cuda_paths.py -m cuda -k "not tall"
  sanitize racecheck_stored_fold 60 racecheck python_tests/test_cuda_paths.py python_tests/test_sce_stored.py \
    python_tests/test_loss.py -m cuda -k "not tall"
  sanitize synccheck_hull 40 synccheck python_tests/test_hull.py -m cuda
elif [ "${SANITIZE:-1}" = "1" ]; then
  note "compute-sanitizer: not found on PATH, sanitizers NOT run"
fi

# one_vs_rest_distance at K = 1M (HULL_1M=0 skips): only when at least 100 s are left
left=$(( BUDGET - ($(date +%s) - T_START) ))
if [ "${HULL_1M:-1}" = "1" ] && [ "$BENCH" != "0" ] && [ "$left" -ge 100 ]; then
  mkdir -p "$OUT/hull_1m"
  if timeout "$(cap 90)" python3 benchmarks/bench_hull.py --device cuda --cap 5 --cases 1000000x512 --no-scaling \
      --out "$OUT/hull_1m" > "$OUT/bench_hull_1m.log" 2>&1; then
    cp "$OUT/hull_1m/hull_cuda.md" "$OUT/hull_cuda_1m.md"; note "bench_hull K=1M: ok"
  else
    note "bench_hull K=1M: FAILED or timed out (rc=$?), see bench_hull_1m.log"
  fi
elif [ "${HULL_1M:-1}" = "1" ] && [ "$BENCH" != "0" ]; then
  note "bench_hull K=1M: skipped, ${left} s left of the budget (needs 100)"
fi
note "total: $(( $(date +%s) - T_START )) s of the ${BUDGET} s budget"
python3 scripts/device_table.py "$OUT" --md "$OUT/closing_table.md" > "$OUT/closing_table.log" 2>&1 \
  || note "closing table: FAILED (see closing_table.log)"

{
  echo "# device_check $(date -u +%Y-%m-%dT%H:%MZ)"
  printf -- '- %s\n' "${summary[@]}"
  for f in "$OUT"/*.md; do
    case "$(basename "$f")" in summary.md|closing_table.md) continue ;; esac
    [ -f "$f" ] && { echo; cat "$f"; }
  done
  [ -f "$OUT/closing_table.md" ] && { echo; cat "$OUT/closing_table.md"; }
} > "$OUT/summary.md"
cp "$OUT/summary.md" "$FINAL_OUT/summary.md"
tar czf "$FINAL_OUT/device_check.tgz" -C "$OUT" .
echo
echo "================ device_check summary ================"
printf -- '- %s\n' "${summary[@]}"
echo
cat "$OUT/closing_table.md" 2>/dev/null || echo "(no closing table)"
