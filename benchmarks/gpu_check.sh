#!/usr/bin/env bash
# Every GPU check of the project on a CUDA machine, in about 8 minutes: the tests marked `gpu`
# (pytest -m gpu), the TV-L1 benchmark (benchmarks/flow.py: OpenCV on every core against the
# PyTorch port on the CPU and on the GPU, eager and compiled) and the extractor benchmark
# (benchmarks/extractors.py: clips/s, fp32 and bf16).
#
#   benchmarks/gpu_check.sh OUT_DIR          # from the repository root
#
# Writes OUT_DIR/env.txt (GPU, driver, versions), pytest_gpu.txt and pytest_gpu.xml (JUnit),
# flow.txt, extractors.txt and summary.txt (each step's exit status and seconds). Each step has
# a time limit and the script goes on after a failed one. It installs nothing except, when the
# repository has no .venv yet, `pip install -e '.[dev]'` into a fresh one (not counted in the
# 8 minutes). Tests that need the real videos of ../shared/videos skip without them (or set
# RESLSTM_TEST_VIDEOS).
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR   (run from the repository root)" >&2
    exit 2
fi
if [ ! -f pyproject.toml ] || [ ! -d reslstm/flow/tvl1 ]; then
    echo "$0: run it from the repository root" >&2
    exit 2
fi
out=$1
mkdir -p "$out"
py=.venv/bin/python
if [ ! -x "$py" ]; then
    echo "no .venv here: creating one with pip install -e '.[dev]'"
    python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' || exit 1
fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"
    "$py" -c 'import torch, cv2; print("torch", torch.__version__, "CUDA", torch.version.cuda,
"available", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-");
print("OpenCV", cv2.__version__, "IPP", cv2.ipp.useIPP())'
    echo "CPU cores: $(nproc)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
: > "$out/summary.txt"

# step NAME LIMIT_S LOG COMMAND...: run with a time limit, log to OUT/LOG, record status and time
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (at most ${limit} s) -> $out/$log"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$log"
    local rc=${PIPESTATUS[0]}
    local note=""
    [ "$rc" -eq 124 ] && note=" (time limit)"
    echo "$name: exit $rc$note, $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

step "pytest -m gpu" 180 pytest_gpu.txt \
    "$py" -m pytest -m gpu -v -rs -p no:cacheprovider --junitxml="$out/pytest_gpu.xml"
# CUDA rows stop starting after 150 s, so the flow benchmark ends well inside its limit.
step "benchmarks/flow.py" 240 flow.txt "$py" benchmarks/flow.py --budget-s 150
step "benchmarks/extractors.py" 100 extractors.txt "$py" benchmarks/extractors.py

echo "== summary ($out/summary.txt)"
cat "$out/summary.txt"
