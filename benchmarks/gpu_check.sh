#!/usr/bin/env bash
# The GPU measurement, prepared for a session that is lent a GPU machine (the `device` tool).
# That machine has PyTorch but no network and no aelab install: aelab runs from src/, and MNIST
# travels as the four .gz files in a carried, git-ignored folder. Here, before the call:
#   mkdir -p .gpu-data && cp ~/.cache/aelab/data/MNIST/raw/*-ubyte .gpu-data/ && gzip -f .gpu-data/*-ubyte
#   echo /.gpu-data/ >> .git/info/exclude
# then: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-data"], timeout_s=540)
# Results: $OUT/bench-*.txt and .json; copy the numbers into benchmarks/RESULTS.md.
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data=/tmp/aelab-data
mkdir -p "$data/MNIST/raw"
for f in .gpu-data/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
out=${OUT:-benchmarks/out}
mkdir -p "$out"
for precision in fp32 bf16; do
  python3 benchmarks/bench.py --full --precision "$precision" --data-dir "$data" | tee "$out/bench-$precision.txt"
  cp "$(ls -t benchmarks/out/bench-*.json | head -1)" "$out/bench-$precision.json"
done
