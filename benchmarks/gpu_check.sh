#!/usr/bin/env bash
# GPU checks of nasforge.hardware (issue 4), for a fresh machine with CUDA PyTorch installed.
#
#   bash benchmarks/gpu_check.sh            # about 2-3 minutes; results also under $OUT
#
# Uses the system python3 (or $PYTHON) with torch, onnxruntime, numpy, scipy, typer, rich,
# pyyaml and pytest; nasforge runs from this checkout via PYTHONPATH (nothing is installed).
# Parts: (1) the gpu-marked tests, (2) a CUDA-events measurement of mobile models with the
# harness, memory and energy, (3) goal 2 of benchmarks/latency.py (nb201 under onnxruntime's
# parallel executor) on the machine's otherwise idle CPU cores.
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/nasforge-gpu-check}
mkdir -p "$OUT"
status=0

echo "== environment"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi not found"
$PY -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'onnxruntime', o.__version__)"

echo "== (1) gpu-marked tests"
timeout 150 $PY -m pytest -q -s -m gpu -p no:cacheprovider tests/test_hardware_gpu.py 2>&1 \
  | tee "$OUT/gpu_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== (2) cuda backend: harness, memory, energy"
timeout 90 $PY - <<'EOF' 2>&1 | tee "$OUT/cuda_measure.log"
import numpy as np, torch
from nasforge.hardware.energy import measure_energy
from nasforge.hardware.memory import check_memory
from nasforge.hardware.timing import measure_latency
from nasforge.spaces import create_space

space = create_space("mobile", (3, 32, 32), 10)
rng = np.random.default_rng(0)
for i in range(3):
    arch = space.sample(rng)
    model = space.build(arch)
    for batch in (1, 64):
        m = measure_latency(model, (3, 32, 32), batch_size=batch, backend="cuda", repeats=60)
        print(f"mobile arch {i} batch {batch:3d}: median {m.median_ms:.4f} ms  IQR {m.iqr_ms:.4f}  "
              f"min {m.min_ms:.4f}  outliers {m.outliers}  remeasured {m.remeasured}  [{m.clock}]")
c = check_memory(model, (3, 32, 32), 64, device="cuda")
print("memory (bytes): predicted activations", c.predicted.peak_activation_bytes,
      "measured", c.measured.peak_bytes, "params", c.predicted.param_bytes)
print("energy:", measure_energy(model, (3, 32, 32), 64, backend="cuda", duration_s=1.0).to_dict())
print("fingerprint:", m.fingerprint)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== (3) goal 2 on a quiet multi-core CPU: nb201, onnxruntime parallel vs sequential sum"
timeout 150 $PY benchmarks/latency.py --only nb201 --n 40 --nb201-threads 4 --tables "$OUT/tables" \
  --json "$OUT/nb201_parallel.json" 2>&1 | tee "$OUT/nb201_parallel.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== done (status $status); logs in $OUT"
exit $status
