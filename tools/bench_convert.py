"""Per-process peak host memory of `msm convert` on P processes vs 1, relative to model size.

Writes a random float32 Llama-shaped HF model (few layers, wide; no torch needed), then runs
`msm convert hf-to-orbax` and `msm convert orbax-to-hf` as 1 process and as P processes of one
CPU device each, joined by jax.distributed over 127.0.0.1 (the same path as a multi-host TPU
slice). Each process's peak RSS comes from wait4(); this parent imports no jax and builds the
model in a child, since a child's peak includes the memory of the process it was started from.
A process that only imports jax and the converters is the baseline measured in the same run;
figures are (peak - baseline) / model size.
On a CPU host the devices' memory is host memory, so an import holds its share of the model.

    nice -n 5 .venv/bin/python tools/bench_convert.py [--hidden 2048 --layers 4 --vocab 32000 --processes 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "import jax, msm_jax.cli, msm_jax.hf.import_hf, msm_jax.hf.export_hf; jax.devices()"
MSM = "import sys; from msm_jax.cli import main; sys.exit(main(sys.argv[1:]))"


MAKE = r"""
import json, sys
from pathlib import Path
import numpy as np
from msm_jax.hf.hf_config import hf_config_from_model
from msm_jax.hf.names import tensor_maps
from msm_jax.hf.safetensors_io import write_sharded
from msm_jax.models.config import ModelConfig

out, hidden, layers, vocab = Path(sys.argv[1]), *map(int, sys.argv[2:5])
cfg = ModelConfig(family="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                  num_layers=layers, num_heads=hidden // 64, num_kv_heads=max(1, hidden // 256),
                  param_dtype="float32")
rng = np.random.default_rng(0)
specs = [(name, tm.hf_shape, np.dtype(np.float32), lambda shape=tm.hf_shape: 0.02 * rng.standard_normal(shape, np.float32))
         for tm in tensor_maps(cfg) for name in tm.hf_names]
write_sharded(out, specs, max_shard_bytes=400 * 2**20)
(out / "config.json").write_text(json.dumps(hf_config_from_model(cfg, "float32")))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, code: str, *args: str) -> tuple[list[int], float]:
    """Start `processes` copies of `python -c code args` (one CPU device each, joined by
    jax.distributed when more than one); (peak RSS of each, wall seconds)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    port = free_port()
    start = time.time()
    procs = []
    for i in range(processes):
        if processes > 1:
            env = dict(env, MSM_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", MSM_NUM_PROCESSES=str(processes),
                       MSM_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    peaks = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        output = p.stdout.read().decode()
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(args[:2])} failed (exit {p.returncode}):\n{output[-3000:]}")
        peaks.append(usage.ru_maxrss * 1024)
    return peaks, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--workdir", help="folder for the model and outputs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        hf = Path(tmp, "hf")
        run(1, MAKE, str(hf), str(args.hidden), str(args.layers), str(args.vocab))
        model_bytes = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
        h, f = args.hidden, args.hidden * 11 // 4
        largest = max(args.vocab * h, h * f) * 4
        print(f"model: {model_bytes / 2**20:.0f} MiB float32 Llama ({args.layers} layers, hidden {h}, MLP {f}, "
              f"vocab {args.vocab}); largest tensor {largest / 2**20:.0f} MiB")
        (base,), _ = run(1, BASELINE)
        print(f"baseline process (imports only): {base / 2**20:.0f} MiB")
        for processes in (1, args.processes):
            ckpt, out = Path(tmp, f"ckpt{processes}"), Path(tmp, f"out{processes}")
            for name, argv in (("hf-to-orbax", [str(hf), str(ckpt)]), ("orbax-to-hf", [str(ckpt), str(out)])):
                peaks, seconds = run(processes, MSM, "convert", name, *argv)
                ratios = ", ".join(f"{(p - base) / model_bytes:.2f}" for p in peaks)
                print(f"{name} on {processes} process{'es' if processes > 1 else ''}: peak RSS above baseline per "
                      f"process = [{ratios}] x model size (max {(max(peaks) - base) / 2**20:.0f} MiB = "
                      f"{(max(peaks) - base) / largest:.2f} x largest tensor); {seconds:.1f} s")


if __name__ == "__main__":
    main()
