#!/usr/bin/env bash
# Here (with network and git), before a lent GPU's call: what bench/gpu_call.sh needs carried,
# checked against the device tool's 64 MiB, and the call to make.
#   bash bench/gpu_prepare.sh        # -> .whl/ and .replay/ (both git-ignored), the call printed
# .whl: the wheels the lent GPUs' image lacks (/work/.library/device/KINDS.md lists what it has:
# torch 2.11, Triton 3.6, transformers 5.17, no Liger, no DeepSpeed), pure Python: Liger (its
# kernels in the trainer on CUDA, the loss suite's Liger rows) and Cut Cross-Entropy (a loss
# provider). Not carried: the CuTe DSL (nvidia-cutlass-dsl-libs-cu12 alone is 92 MB), so
# Liger's Hopper FLCE, QuACK and FA4 skip, saying so; flash-attn 2 (no wheel on PyPI), so the
# recipe's attention is SDPA with the 2-D mask, labelled; torch 2.13's linear_cross_entropy
# (torch 2.11 there has none: those rows skip). DeepSpeed is not needed by any step.
# .replay: the two replayed commits' trees (the device's copy has no git history) and COMMIT.
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
mkdir -p .whl .replay
for spec in liger-kernel==0.8.5 cut-cross-entropy==25.1.1; do
  $py -m pip download -q --no-deps --only-binary=:all: -d .whl "$spec"
done
$py -m bench.bench_host_replay --write-archives .replay
git rev-parse --short HEAD >.replay/COMMIT
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- | tail -n 1 | cut -f1)
carried=$(du -cb .whl .replay | tail -n 1 | cut -f1)
echo "gpu_prepare: the tree $((tree / 1024)) KiB + carried $((carried / 1024)) KiB of 65536 KiB"
if ((tree + carried > 64 * 1024 * 1024)); then
  echo "gpu_prepare: over the device tool's 64 MiB" >&2
  exit 1
fi
echo 'gpu_prepare: the call: run(command="bash bench/gpu_call.sh", carry=[".whl", ".replay"], timeout_s=600)'
