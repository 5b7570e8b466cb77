#!/usr/bin/env bash
# The chosen recipe on a GPU machine (issue 14): about 100 epochs of FER-2013 within 9 minutes of device time.
# Run from the repository root, e.g. through the device tool:  bash bench/device_train.sh [DATA.npz] [extra flags]
# Extra flags go to `fervid train` (bench/device_train.py --help), e.g. --stem small-pool --epochs 80 --compile.
# Back in $OUT: candidate.pt in parts of at most 16 MiB, JOIN.txt (the `cat` line that joins them), history.json,
# train.log.
set -euo pipefail
OUT="${OUT:-runs/device-out}"
mkdir -p "$OUT"
DATA=""
if [[ $# -gt 0 && "$1" != --* ]]; then DATA="$1"; shift; fi
if [[ -z "$DATA" ]]; then
  for candidate in ../shared/data/fer2013.npz shared/data/fer2013.npz; do
    if [[ -f "$candidate" ]]; then DATA="$candidate"; break; fi
  done
fi
if [[ -z "$DATA" ]]; then echo "no fer2013.npz in ../shared/data or shared/data; pass its path first" >&2; exit 2; fi
PYTHON="${PYTHON:-$(command -v python3)}"
[[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PYTHON" bench/device_train.py --data "$DATA" --parts-dir "$OUT" --device cuda --epochs 100 --batch-size 256 \
  "$@" 2>&1 | tee "$OUT/train.log"
