#!/usr/bin/env bash
# One-shot accelerator check (one GPU, under 8 minutes): cuDNN vs XLA attention on packed rows,
# train-step MFU of a ~1.2B Llama in bfloat16, sampler tokens/s, vLLM greedy parity (base + PEFT).
# Arguments go to tools/bench_device.py (see --help); --dry-run runs tiny shapes on CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
if [ -x "$here/../.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then python="$here/../.venv/bin/python"; fi
exec timeout "${BENCH_DEVICE_TIMEOUT:-480}" "$python" "$here/bench_device.py" "$@"
