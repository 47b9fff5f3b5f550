"""Peak host memory of `msm convert` relative to model size.

Builds a random Llama-shaped HF model, then runs each conversion direction in a fresh
process and reads its peak RSS. A process that only imports msm-jax and jax is the
baseline measured in the same run; figures are (peak - baseline) / model bytes.

    .venv/bin/python tools/bench_convert.py [--hidden 1024 --layers 8 --vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
mode, a, b = sys.argv[1:4]
t = time.time()
if mode == "baseline":
    import jax, msm_jax.hf.import_hf, msm_jax.hf.export_hf  # noqa: F401
elif mode == "import":
    from msm_jax.hf.import_hf import hf_to_orbax
    hf_to_orbax(a, b)
elif mode == "export":
    from msm_jax.hf.export_hf import orbax_to_hf
    orbax_to_hf(a, b)
elif mode == "make":
    import torch, transformers
    hidden, layers, vocab = map(int, b.split(","))
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                                   num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                   num_key_value_heads=hidden // 256, tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(a, max_shard_size="400MB")
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": time.time() - t}))
"""


def run(mode: str, a: str = "", b: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, a, b], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf, ckpt, out = Path(tmp, "hf"), Path(tmp, "ckpt"), Path(tmp, "out")
        run("make", str(hf), f"{args.hidden},{args.layers},{args.vocab}")
        model_bytes = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
        base = run("baseline")
        imp = run("import", str(hf), str(ckpt))
        exp = run("export", str(ckpt), str(out))
        h, f, L, v = args.hidden, 4 * args.hidden, args.layers, args.vocab
        largest_hf = max(v * h, h * f) * 4
        largest_stacked = max(v * h, L * h * f) * 4
        print(f"model: {model_bytes / 2**20:.0f} MiB fp32 ({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}); "
              f"largest HF tensor {largest_hf / 2**20:.0f} MiB, largest stacked parameter {largest_stacked / 2**20:.0f} MiB")
        print(f"baseline process (imports only): {base['peak_rss'] / 2**20:.0f} MiB")
        for name, r in (("hf-to-orbax", imp), ("orbax-to-hf", exp)):
            extra = r["peak_rss"] - base["peak_rss"]
            print(f"{name}: peak RSS {r['peak_rss'] / 2**20:.0f} MiB, above baseline {extra / 2**20:.0f} MiB = "
                  f"{extra / model_bytes:.2f} x model size = {extra / largest_stacked:.2f} x largest stacked parameter; "
                  f"{r['seconds']:.1f} s")
        print("note: on a CPU host the imported model's 'device' is host memory, so import holds the model once;"
              " on TPU/GPU hosts each parameter moves to its device shards as it is assembled.")


if __name__ == "__main__":
    main()
