#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one command on a bare GPU machine with JAX,
# sized to finish in under nine minutes: the recipe times and the bfloat16 step share
# (benchmarks/recipe_speed.py, within BUDGET_S seconds, bfloat16 runs first) and DC+IMP's time
# to its first batch cold and from the compilation cache (benchmarks/compilation_cache.py).
#
#   bash benchmarks/gpu_session.sh                  # results in $OUT (default /tmp/gpu_session)
#   SMOKE=1 bash benchmarks/gpu_session.sh          # the script itself on a CPU, tiny data
#
# Packages JAX's image lacks travel as wheels in .whl/ (docs/performance.md, "Recipe times on
# a GPU"); without an installed checkout, ssl/ is imported as `semisup` through a link.
# At most 8 files land in $OUT: device.txt, the two reports as JSON and markdown, the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
BUDGET_S=${BUDGET_S:-300}
SCALE=${SCALE:-0.03}
if [ -n "${SMOKE:-}" ]; then
  RECIPE_FLAGS=(--smoke) CACHE_FLAGS=(--quick) PLATFORM=cpu
else
  RECIPE_FLAGS=() CACHE_FLAGS=(--cases=resnet12_84) PLATFORM=cuda
fi
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
[ -e semisup ] || ln -s ssl semisup
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
{
  date -u
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown (not a git checkout)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())"
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

python3 benchmarks/recipe_speed.py --out=/tmp/recipe_speed --data-dir=/tmp/recipe_data \
  --scale="$SCALE" --dtypes=bfloat16,float32 \
  --recipes=mini_dc,mini_imp,cifar10_mt_dlp,cifar100_mt_dlp --budget-s="$BUDGET_S" \
  "${RECIPE_FLAGS[@]}"
cp /tmp/recipe_speed/recipe_speed.json /tmp/recipe_speed/recipe_speed.md "$OUT/"

JAX_PLATFORMS=$PLATFORM timeout 200 python3 benchmarks/compilation_cache.py "${CACHE_FLAGS[@]}" \
  --out=/tmp/compilation_cache
cp /tmp/compilation_cache/compilation_cache.json "$OUT/" 2>/dev/null

tar czf "$OUT/logs.tgz" -C /tmp recipe_speed/logs 2>/dev/null
ls -l "$OUT"
