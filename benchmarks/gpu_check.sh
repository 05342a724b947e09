#!/usr/bin/env bash
# The workstation-GPU check (issue 16), set-up included, in one call:
#
#   benchmarks/gpu_check.sh OUT_DIR [--device cuda|cpu] [--smoke] [gpu_check.py options]
#
# 1. Set-up from the README's commands: `make venv` (torch pins + pip install -e '.[EXTRAS]'),
#    unless .venv already imports edgetransfer, torch and onnxruntime. Without a reachable package
#    index (pip fails fast: 1 retry, 15 s timeout) it falls back to a venv over the machine's own
#    site-packages (--system-site-packages) with edgetransfer installed --no-deps.
# 2. On --device cuda (the default): onnxruntime-gpu in place of onnxruntime, the same version
#    (a wheel in [../]shared/wheels/ first, else the index). When it cannot be had, onnxruntime stays
#    and the ONNX Runtime CUDA rows come back as failed checks with the reason; nothing else changes.
# 3. benchmarks/gpu_check.py: training (fp32, bf16, fp16), export, torch CUDA and ORT CUDA EP at
#    batch 1/8/64 (see its docstring). Everything goes to OUT_DIR: setup.log, run.log,
#    gpu_check.json; the last line on stdout is one JSON document.
# Exit code: gpu_check.py's (0 all checks passed, 1 a check failed), 2 on bad usage.
set -uo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--device cuda|cpu] [--smoke] [gpu_check.py options]" >&2
    exit 2
fi
OUT=$1; shift
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
DEVICE=cuda
prev=""
for a in "$@"; do
    [ "$prev" = "--device" ] && DEVICE=$a
    case $a in --device=*) DEVICE=${a#--device=} ;; esac
    prev=$a
done
SETUP_LOG=$OUT/setup.log
: >"$SETUP_LOG"
t0=$(date +%s)
export PIP_RETRIES=1 PIP_TIMEOUT=15 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=.venv/bin/python
probe() { "$PY" -c "import edgetransfer, torch, onnxruntime, timm" >>"$SETUP_LOG" 2>&1; }

if [ -x "$PY" ] && probe; then
    SETUP="existing .venv"
else
    echo "== make venv (the README's set-up)" >>"$SETUP_LOG"
    if timeout 480 make venv >>"$SETUP_LOG" 2>&1 && probe; then
        SETUP="make venv"
    else
        echo "== make venv failed (no package index?); offline fallback: venv over the system site-packages" >>"$SETUP_LOG"
        rm -rf .venv
        python3 -m venv --system-site-packages .venv >>"$SETUP_LOG" 2>&1
        "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$SETUP_LOG" 2>&1
        if probe; then SETUP="offline: --system-site-packages venv"; else SETUP="failed (see setup.log)"; fi
    fi
fi

ORT_GPU="not attempted (--device $DEVICE)"
if [[ "$DEVICE" == cuda* ]] && [[ "$SETUP" != failed* ]]; then
    if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>>"$SETUP_LOG"; then
        ORT_GPU="already installed"
    else
        ORTV=$("$PY" -c "import onnxruntime as o; print(o.__version__)" 2>>"$SETUP_LOG")
        WH=/tmp/gpu_check_wheels
        mkdir -p "$WH"
        wheel=$(ls shared/wheels/onnxruntime_gpu-*.whl ../shared/wheels/onnxruntime_gpu-*.whl 2>/dev/null | head -1)
        if [ -z "$wheel" ]; then
            echo "== pip download onnxruntime-gpu==$ORTV" >>"$SETUP_LOG"
            timeout 240 "$PY" -m pip download -q --no-deps -d "$WH" "onnxruntime-gpu==$ORTV" >>"$SETUP_LOG" 2>&1 \
                || timeout 240 "$PY" -m pip download -q --no-deps -d "$WH" onnxruntime-gpu >>"$SETUP_LOG" 2>&1
            wheel=$(ls "$WH"/onnxruntime_gpu-*.whl 2>/dev/null | head -1)
        fi
        if [ -n "$wheel" ]; then
            # both wheels own the onnxruntime/ package directory: remove the CPU one first
            "$PY" -m pip uninstall -y -q onnxruntime >>"$SETUP_LOG" 2>&1
            if "$PY" -m pip install -q --no-deps "$wheel" >>"$SETUP_LOG" 2>&1; then
                ORT_GPU="installed $(basename "$wheel")"
            else
                ORT_GPU="failed to install $(basename "$wheel") (see setup.log)"
            fi
        else
            ORT_GPU="no onnxruntime-gpu wheel: no package index reachable and none in ../shared/wheels/"
        fi
    fi
fi
SETUP_S=$(( $(date +%s) - t0 ))
echo "setup: $SETUP; onnxruntime-gpu: $ORT_GPU; ${SETUP_S} s" | tee -a "$SETUP_LOG" >&2

if [[ "$SETUP" == failed* ]]; then
    python3 -c 'import json, sys; print(json.dumps({"benchmark": "gpu_check", "all_checks_pass": False,
        "error": "set-up failed: " + sys.argv[1], "setup_log": sys.argv[2], "setup_s": int(sys.argv[3])}))' \
        "$SETUP" "$SETUP_LOG" "$SETUP_S"
    exit 1
fi
export GPU_CHECK_SETUP=$SETUP GPU_CHECK_ORT_GPU=$ORT_GPU GPU_CHECK_SETUP_S=$SETUP_S
# the data travels with the working tree as ./shared (device machines) or sits beside it (../shared)
if [ -z "${EDGETRANSFER_HYMENOPTERA:-}" ]; then
    for d in shared/data/hymenoptera ../shared/data/hymenoptera; do
        [ -d "$d/train" ] && EDGETRANSFER_HYMENOPTERA=$(cd "$d" && pwd) && break
    done
fi
export EDGETRANSFER_HYMENOPTERA=${EDGETRANSFER_HYMENOPTERA:-../shared/data/hymenoptera}
"$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2> >(tee "$OUT/run.log" >&2) | tee "$OUT/result.jsonl"
exit "${PIPESTATUS[0]}"
