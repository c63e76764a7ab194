#!/usr/bin/env bash
# The GPU checks of issue 13 in one call of about 10 minutes, for a session that is lent a
# GPU machine (15 minutes of device time in all, start-up included: one call, made first).
# Everything it prints also lands in $OUT (or ./device_out when OUT is unset).
#
# Before the call, in the repository root of the machine that makes the call (the GPU
# machine has torch but no Hydra; hydra-core, omegaconf, antlr4 and geotorch travel as
# wheels, see the device tool's README):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform any -d .whl hydra-core omegaconf geotorch hydra-joblib-launcher
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # an sdist only: built here
# (pure-Python wheels, under 0.5 MB; the checkout may still hold them from an earlier session)
# then run, carrying .whl:  bash benchmarks/device_check.sh      (--quick: a smoke run, any machine;
# run it here first: it also runs tests/test_cuda.py on the CPU, which catches a CUDA test broken since the last GPU run)
#
# Parts (each under its own time limit, so one slow part cannot eat the others, and all within
# 570 s, DEVICE_CHECK_BUDGET; $OUT/summary.txt names each part's exit, and the script exits 1
# when any part failed, was cut or was skipped):
#   1. tests/test_cuda.py                                    (bf16 steps, resume, loader, retractions,
#                                                              compile with inductor, landscape)
#   2. skip_apply.py                                         (what applying a skip matrix costs, by implementation)
#   3. gpu_throughput.py --impls factor,matmul --profile, resnet20 and resnet18   (step time vs identity;
#                                                              kernel time vs host calls per step)
#   4. gpu_throughput.py --compile, resnet20, identity and steepest  (the same, compile=true: forward,
#                                                              backward and retraction compiled, no per-op host cost)
#   5. orthogonal_layer.py, C in 16..512                     (vs torch and geotorch)
#   6. cifar_epoch_time.py, 2 epochs                         (end to end through run_experiments)
# If device time remains after it (each a separate call):
#   python3 benchmarks/gpu_throughput.py --models resnet20 --compile --no-settings \
#     --variants identity,learnable_orth/exp,learnable_orth/cayley --rounds 3 --steps 10 --warmup 2   (part 4's other methods)
#   python3 benchmarks/gpu_throughput.py --models resnet20 --compile --compile-mode reduce-overhead --no-settings \
#     --variants identity,linear,learnable_orth/steepest,learnable_orth/cayley   (CUDA graphs: no launch cost at all)
#   python3 -m pytest -o addopts= -q -rfE tests/test_cuda.py -k "overhead or exp_skips"   (compile_mode=reduce-overhead: training
#     under CUDA graphs; compiled exp skips without a host read)
#   python3 benchmarks/orthogonal_layer.py --sizes 64,256,512 --steps 100 --rounds 3 --retract-sizes "" --compile
#     (the layer with its retraction compiled, as compile=true runs it)
#   python3 benchmarks/skip_step_time.py --device cuda --no-steps --methods cayley,exp,householder   (batched W's)
#   python3 benchmarks/landscape_grid.py --device cuda --stack 2,4,8;  python3 benchmarks/landscape_hessian.py --device cuda
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--quick" ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "device_check.sh: no CUDA device here (or no torch for python3): the full check is for a GPU machine;" \
    "--quick runs a smoke run of the script on any machine" >&2
  exit 2
fi
out="${OUT:-device_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
  date -u
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm,memory.total --format=csv
  fi
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device: CPU only')"
  git log -1 --oneline 2>/dev/null
} 2>&1 | tee "$out/env.txt"

# The whole script keeps within $budget seconds (the device tool stops a command at 600 s, and
# then nothing after the cut is summed up): a part gets its own limit or what is left, whichever
# is less, and a part with under 10 s left is skipped and named so.
budget="${DEVICE_CHECK_BUDGET:-570}"
summary=()
failed=0
part() {  # part NAME SECONDS COMMAND...: run under a limit, its output in $out/NAME.txt
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt 10 ]; then
    echo "== $name: skipped, ${left} s of the script's ${budget} s left"
    summary+=("$name: skipped (out of time)")
    failed=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  tail -n 60 "$out/$name.txt"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  if [ "$rc" -eq 124 ]; then summary+=("$name: cut at its ${limit} s limit"); else summary+=("$name: exit $rc"); fi
  [ "$rc" -ne 0 ] && failed=1
}

finish() {  # one line per part, in $out/summary.txt too; exit 1 when any part failed, was cut or skipped
  printf '%s\n' "== summary (${SECONDS} s in all)" "${summary[@]}" | tee "$out/summary.txt"
  exit "$failed"
}

if [ "${1:-}" = "--quick" ]; then  # a smoke run of the script itself, on any machine (the CUDA tests rehearsed on the CPU:
  # 155 s on 2 cores with a warm inductor cache, 240+ s with a cold one)
  budget="${DEVICE_CHECK_BUDGET:-1500}"
  part cuda_tests 420 env OSC_CUDA_REHEARSAL=1 python3 -m pytest -o addopts= -q -p no:cacheprovider tests/test_cuda.py
  part skip_apply 60 python3 benchmarks/skip_apply.py --quick
  part step_time 200 python3 benchmarks/gpu_throughput.py --quick --impls factor,matmul --no-settings
  part step_time_compiled 200 python3 benchmarks/gpu_throughput.py --quick --no-settings --compile aot_eager \
    --variants identity,linear,learnable_orth/steepest,learnable_orth/cayley
  part orthogonal_layer 120 python3 benchmarks/orthogonal_layer.py --quick --compile aot_eager
  part epoch_time 240 python3 benchmarks/cifar_epoch_time.py --quick --variants identity,learnable_orth/steepest
  finish
fi
# a hung test should not take the part's summary with it (pytest-timeout is in the GPU image)
per_test=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=120")
part cuda_tests 180 python3 -m pytest -o addopts= -q -rfE -p no:cacheprovider $per_test tests/test_cuda.py -k "not overhead and not exp_skips"
part skip_apply 30 python3 benchmarks/skip_apply.py
part step_time 150 python3 benchmarks/gpu_throughput.py --models resnet20,resnet18 --impls factor,matmul \
  --rounds 3 --steps 10 --warmup 2 --profile
# two variants: inductor compiles each (forward, backward, retraction) for tens of seconds, and a part cut
# at its limit before the interleaved timing ends prints no table at all (exp and cayley: see above)
part step_time_compiled 100 python3 benchmarks/gpu_throughput.py --models resnet20 --compile --no-settings \
  --variants identity,learnable_orth/steepest --rounds 3 --steps 10 --warmup 2
part orthogonal_layer 60 python3 benchmarks/orthogonal_layer.py --sizes 16,64,256,512 --steps 100 --rounds 3 \
  --retract-sizes 256,512 --retract-rounds 2 --retract-calls 2
part epoch_time 60 python3 benchmarks/cifar_epoch_time.py --epochs 2 \
  --variants identity,learnable_orth/steepest,linear
finish
