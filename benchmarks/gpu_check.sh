#!/usr/bin/env bash
# The GPU measurement, one prepared script for a session lent a GPU machine (the `device` tool).
# That machine has PyTorch and aelab's dependencies but no network and no aelab install: aelab
# runs from src/, and MNIST travels as the four .gz files in a carried, git-ignored folder.
# Here, before the call:
#   mkdir -p .gpu-data && for f in ~/.cache/aelab/data/MNIST/raw/*-ubyte; do gzip -c $f > .gpu-data/$(basename $f).gz; done
#   echo /.gpu-data/ >> .git/info/exclude
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-data"], timeout_s=570)
# It runs (each part under its own time limit, so one failure does not lose the rest):
#   1. the CUDA tests (tests/test_cuda.py: graphed training = eager training, resume, bf16) and test_training.py;
#   2. bench.py --full on the GPU: the tutorial as written, aelab fp32 and bf16 with CUDA graphs, aelab
#      fp32 without graphs (--eager), and the 10-epoch run;
#   3. `aelab train` as a user runs it (defaults, report included), timed.
# Results: $OUT/*.txt, the bench JSON and the run's metrics; copy the numbers into benchmarks/RESULTS.md.
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/out}
mkdir -p "$out" benchmarks/out
data=/tmp/aelab-data
mkdir -p "$data/MNIST/raw"
for f in .gpu-data/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
export AELAB_DATA_DIR=$data
{ nvidia-smi -L; python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))'; nproc; } 2>&1 | tee "$out/env.txt"

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_training.py 2>&1 | tail -25 | tee "$out/tests.txt"

timeout 300 python3 benchmarks/bench.py --full --precision fp32 bf16 --eager 2>&1 | tee "$out/bench.txt"
cp "$(ls -t benchmarks/out/bench-*.json | head -1)" "$out/bench.json" 2>/dev/null

start=$(date +%s%N)
timeout 100 python3 -m aelab train --out /tmp/gpu-run 2>&1 | grep -v "^epoch  *[0-9]*/30" | tail -12 | tee "$out/train.txt"
echo "aelab train, whole command: $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$out/train.txt"
cp /tmp/gpu-run/metrics.csv /tmp/gpu-run/evaluation.json "$out/" 2>/dev/null
true
