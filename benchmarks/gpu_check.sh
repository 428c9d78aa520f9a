#!/usr/bin/env bash
# The GPU measurement, one prepared script for a session lent a GPU machine (the `device` tool).
# That machine has PyTorch and aelab's dependencies but no network and no aelab install: aelab
# runs from src/, and MNIST travels as the four .gz files in a carried, git-ignored folder.
# Here, before the call:
#   mkdir -p .gpu-data && for f in ~/.cache/aelab/data/MNIST/raw/*-ubyte; do gzip -c $f > .gpu-data/$(basename $f).gz; done
#   echo /.gpu-data/ >> .git/info/exclude
#   mkdir -p .whl && .venv/bin/pip download --no-deps plotly -d .whl   # that machine lacks plotly (the report)
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-data", ".whl"], timeout_s=570)
# (`bash benchmarks/gpu_check.sh quick` leaves out the benchmark: tests and `aelab train` only.)
# It runs (each part under its own time limit, so one failure does not lose the rest):
#   1. the CUDA tests (tests/test_cuda.py: graphed training = eager training, resume, bf16), the training and
#      CLI tests (which hide the GPU), and how far two eager and two graphed runs differ;
#   2. bench.py --full on the GPU: the tutorial as written, aelab fp32 and bf16 with CUDA graphs, aelab
#      fp32 without graphs (--eager), and the quick recipe (time to quality);
#   3. `aelab train` as a user runs it (defaults, report included), timed;
#   4. issue 13's ratio: `torchrun --nproc-per-node 1` (DDP over NCCL, the eager step) against a plain
#      run (CUDA graphs), 5 epochs each, seconds per epoch from metrics.csv.
# Results: $OUT/*.txt, the bench JSON and the run's metrics; copy the numbers into benchmarks/RESULTS.md.
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/out}
mkdir -p "$out" benchmarks/out
data=/tmp/aelab-data
mkdir -p "$data/MNIST/raw"
for f in .gpu-data/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
export AELAB_DATA_DIR=$data
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/extra .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/extra"
fi
{ nvidia-smi -L; python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))'; nproc; } 2>&1 | tee "$out/env.txt"

{
  AELAB_TEST_CUDA=1 timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_cuda.py
  [ "${1:-}" = quick ] || timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_training.py tests/test_cli.py
  AELAB_TEST_CUDA=1 timeout 60 python3 - <<'PY'
import os, sys
sys.path.insert(0, "tests")
from conftest import make_splits
from aelab import RunConfig, train
from aelab.config import train_config_for
for graphs in ("0", "0", "1", "1"):
    os.environ["AELAB_CUDA_GRAPHS"] = graphs
    config = RunConfig(train=train_config_for("fast", epochs=3, batch_size=32, lr=3e-3, device="cuda"))
    result = train(config, f"/tmp/det-{graphs}", overwrite=True, report=False, data=make_splits(n_train=250))
    print("graphs" if graphs == "1" else "eager ", [f"{row['val_loss']:.9f}" for row in result.metrics])
PY
} 2>&1 | tail -150 | tee "$out/tests.txt"
[ "${1:-}" = quick ] || {

timeout 300 python3 benchmarks/bench.py --full --precision fp32 bf16 --eager 2>&1 | tee "$out/bench.txt"
cp "$(ls -t benchmarks/out/bench-*.json | head -1)" "$out/bench.json" 2>/dev/null
}

start=$(date +%s%N)
timeout 100 python3 -m aelab train --out /tmp/gpu-run 2>&1 | grep -v "^epoch  *[0-9]*/30" | tail -12 | tee "$out/train.txt"
echo "aelab train, whole command: $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$out/train.txt"
cp /tmp/gpu-run/metrics.csv /tmp/gpu-run/evaluation.json "$out/" 2>/dev/null

{
  timeout 60 python3 -m aelab train --epochs 5 --device cuda --out /tmp/plain --overwrite --quiet --no-report
  # one process in a process group (NCCL for CUDA tensors, gloo for CPU ones): the start line names them
  timeout 90 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m aelab train --epochs 5 --device cuda \
    --out /tmp/ddp1 --overwrite --no-report | grep "under torchrun"
  for run in plain ddp1; do echo "$run"; cat /tmp/$run/metrics.csv; done
} 2>&1 | tail -40 | tee "$out/torchrun.txt"
true
