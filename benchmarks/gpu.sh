#!/usr/bin/env bash
# The GPU checks and benchmarks of issue #16 in one go, on a machine with CUDA:
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu.md
# 1. the CUDA tests (every model trains, evaluates and checkpoints on the GPU; pinned batches;
#    host synchronisations per step under CUDA's sync-debug mode);
# 2. training throughput against the hand-written loop on the GPU (benchmarks/throughput.py);
# 3. float32 against bf16 networks: a short MNIST run of the default VAE in each precision;
# 4. the same short run on the CPU, for the ratio.
# Each part's output goes into the results file; a failing part is recorded, not fatal.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python}; fi
OUT=benchmarks/results/gpu.md
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if ! $PYTHON -c "import torch" 2>/dev/null; then
    echo "gpu.sh: $PYTHON cannot import torch (make install, or set PYTHON=...)" >&2
    exit 2
fi
if ! $PYTHON -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device here; nothing to measure" >&2
    exit 2
fi

section() {  # section TITLE COMMAND...: runs the command, records its output and exit code
    local title=$1
    shift
    echo "== $title: $*" >&2
    local start=$SECONDS
    "$@" >"$TMP/part.txt" 2>&1
    local code=$?
    {
        echo "## $title"
        echo
        echo "Command: \`$*\` (exit code $code, $((SECONDS - start)) s)"
        echo
        echo '```'
        tail -n 60 "$TMP/part.txt"
        echo '```'
        echo
    } >>"$TMP/gpu.md"
}

{
    echo "# GPU checks and benchmarks (benchmarks/gpu.sh)"
    echo
    $PYTHON - <<'PY'
import torch, pyro, platform
p = torch.cuda.get_device_properties(0)
print(f"Device: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, pyro {pyro.__version__}, {platform.machine()}; "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}.")
PY
    echo
} >"$TMP/gpu.md"

section "CUDA tests" $PYTHON -m pytest -q -s tests/test_cuda.py
section "Throughput on the GPU (ELBO, IWAE-5, DReG-5, K=5000 evaluation)" \
    $PYTHON benchmarks/throughput.py --device cuda --out "$TMP/throughput_gpu.md"
cat "$TMP/throughput_gpu.md" >>"$TMP/gpu.md" 2>/dev/null
for precision in fp32 bf16; do
    section "Default VAE, 3 epochs of MNIST on the GPU, $precision" \
        $PYTHON -m pvae train --model vae --dataset mnist --epochs 3 --device cuda \
        --precision "$precision" --eval-samples 1000 --eval-size 1000 --no-progress \
        --out "$TMP/vae_$precision"
done
section "Default VAE, 3 epochs of MNIST on the CPU" \
    $PYTHON -m pvae train --model vae --dataset mnist --epochs 3 --eval-samples 1000 \
    --eval-size 1000 --no-progress --out "$TMP/vae_cpu"
section "Wall times and test NLL of the three runs" $PYTHON - "$TMP" <<'PY'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
print("| run | train seconds | test NLL | stderr |")
print("|---|---|---|---|")
for name in ("vae_fp32", "vae_bf16", "vae_cpu"):
    path = root / name / "metrics.json"
    if path.exists():
        m = json.loads(path.read_text())
        print(f"| {name} | {m.get('train_wall_time', float('nan')):.1f} | "
              f"{m['test_nll']:.2f} | {m['test_nll_stderr']:.2f} |")
PY
mkdir -p benchmarks/results
cp "$TMP/gpu.md" "$OUT"
echo "gpu.sh: wrote $OUT" >&2
