"""Greedy generation speed: the KV-cache sampler vs compiled-once recomputation vs transformers.

    python tools/bench_sampling.py [--batch 8] [--prompt-len 128] [--new-tokens 64] [--rounds 3] [--json]

One random-weight model (by default the 5.28M-parameter Llama of tools/bench_train.py:
d=256, 6 layers, 8/2 heads, MLP 704, vocab 2048, fp32) is exported to a Hugging Face folder;
three decoders produce the same `new-tokens` greedy tokens for the same batch of prompts:

- `recompute`: a full forward over a fixed [B, P + N] buffer per new token, jitted once
  (the cost of sampling without a cache, compile excluded);
- `kv_cache`: `msm_jax.sampling.Sampler` (prefill once, jitted decode chunks over a KV cache);
- `transformers`: `generate(do_sample=False)` on the exported folder (torch, its own KV cache).

Every decoder runs once to warm up, then `rounds` interleaved rounds (so all see the same
background load), each timed call right after an untimed call of the same decoder; the median
time of each is reported, with the token agreement.

Where the time goes: in the same rounds, `kv_cache` and `transformers` also produce one token
only (`max_tokens=1`: the prompt's forward pass, and for the sampler one decode step, from a
sampler with 1-step chunks). That time is reported as "first token"; the rest of a full call,
divided by the decode steps that call ran after it (`new-tokens - 1`; the sampler decodes whole
chunks), as the time of one decode step of the batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msm_jax.config import CONFIGS_DIR, load_config  # noqa: E402
from msm_jax.models.config import ModelConfig  # noqa: E402
from msm_jax.models.decoder import Decoder  # noqa: E402
from msm_jax.sampling import Sampler, SamplingParams  # noqa: E402

# tools/, this script's own folder
from bench_train import cpu_ticks, describe_load, interleaved_times, machine_load  # noqa: E402

DEFAULT_SET = ["vocab_size=2048", "hidden_size=256", "intermediate_size=704", "num_layers=6",
               "num_heads=8", "num_kv_heads=2"]


def recompute_greedy(model: Decoder, batch: int, plen: int, new_tokens: int):
    """A function prompts -> greedy tokens by full forwards over a fixed buffer (one compile)."""
    graphdef, state = nnx.split(model)
    total = plen + new_tokens

    @jax.jit
    def step(state, tokens, length):
        segs = (jnp.arange(total)[None] < length).astype(jnp.int32).repeat(batch, 0)
        logits = nnx.merge(graphdef, state)(tokens, None, segs)
        nxt = jnp.argmax(logits[:, length - 1], axis=-1).astype(jnp.int32)
        return tokens.at[:, length].set(nxt)

    def run(prompts: np.ndarray) -> np.ndarray:
        tokens = jnp.zeros((batch, total), jnp.int32).at[:, :plen].set(prompts)
        for i in range(new_tokens):
            tokens = step(state, tokens, jnp.int32(plen + i))
        return np.asarray(tokens[:, plen:])

    return run


def load_transformers(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def transformers_greedy(hf, new_tokens: int):
    """A function prompts -> `new_tokens` greedy tokens through the loaded model's `generate`."""
    import torch

    def run(prompts: np.ndarray) -> np.ndarray:
        ids = torch.tensor(prompts, dtype=torch.long)
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
        return out[:, prompts.shape[1]:].numpy()

    return run


def phase_split(seconds: float, first_token_seconds: float, further_steps: int) -> dict:
    """A full call's time split into its first token (the prompt's forward pass) and the mean
    of the `further_steps` decode steps the full call ran after it."""
    return {"first_token_s": first_token_seconds,
            "decode_step_s": (seconds - first_token_seconds) / max(further_steps, 1)}


def export(model: Decoder, out: Path) -> Path:
    from msm_jax import checkpoint
    from msm_jax.hf.export_hf import orbax_to_hf

    checkpoint.save_params(out / "ckpt", checkpoint.params_of(model), checkpoint.make_meta(model.cfg))
    orbax_to_hf(out / "ckpt", out / "hf")
    return out / "hf"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama", help="a preset under configs/models/ (then --set overrides)")
    parser.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                        help="model config override (default: the 5.28M config above)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64, help="the sampler's decode chunk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    parser.add_argument("--no-recompute", action="store_true",
                        help="skip the recompute baseline (slow for long prompts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    overrides = DEFAULT_SET if args.set is None else args.set
    cfg = load_config(ModelConfig, CONFIGS_DIR / "models" / f"{args.model}.yaml", overrides)
    model = Decoder(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, size=(args.batch, args.prompt_len)).astype(np.int32)
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0)

    def sampler_greedy(sampler: Sampler, params: SamplingParams):
        return lambda p: np.asarray([g.tokens for g in sampler.generate(p.tolist(), params, batch_size=args.batch)])

    runners = {} if args.no_recompute else {
        "recompute": recompute_greedy(model, args.batch, args.prompt_len, args.new_tokens)}
    runners["kv_cache"] = sampler_greedy(Sampler(model, chunk_size=args.chunk_size), params)
    # The same decoders producing one token: the prompt's forward pass (see the docstring).
    first = {"kv_cache": sampler_greedy(Sampler(model, chunk_size=1), dataclasses.replace(params, max_tokens=1))}
    threads = None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_transformers:
            import torch

            hf = load_transformers(export(model, Path(tmp)))
            runners["transformers"], first["transformers"] = (transformers_greedy(hf, n) for n in (args.new_tokens, 1))
            threads = torch.get_num_threads()
        outputs = {name: fn(prompts) for name, fn in runners.items()}  # warm-up (compiles)
        first_outputs = {name: fn(prompts) for name, fn in first.items()}

        def seconds(fn):
            def one() -> float:
                t0 = time.perf_counter()
                fn(prompts)
                return time.perf_counter() - t0
            return one

        # Each timed call follows an untimed call of the same decoder (see bench_train.interleaved_times).
        before = cpu_ticks()
        timed = [seconds(fn) for fn in runners.values()] + [seconds(fn) for fn in first.values()]
        all_times = interleaved_times(timed, args.rounds)
        load = machine_load(before, cpu_ticks())
    times = dict(zip(runners, all_times))
    first_times = dict(zip(first, all_times[len(runners):]))
    new = args.batch * args.new_tokens
    result = {"config": {"params_m": round(cfg.num_params() / 1e6, 2), "hidden": cfg.hidden_size,
                         "layers": cfg.num_layers, "vocab": cfg.vocab_size},
              "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "device": jax.devices()[0].platform, "torch_threads": threads, "machine": load, "decoders": {}}
    for name in runners:
        step = statistics.median(times[name])
        agree = float(np.mean(outputs[name] == outputs["kv_cache"]))
        result["decoders"][name] = {"seconds": step, "tokens_per_s": new / step, "token_agreement_with_kv_cache": agree}
        if name in first_times:
            # transformers decodes new_tokens - 1 steps after the prompt's forward pass; the
            # sampler runs whole chunks, and its one-token call already ran one decode step
            steps = (args.new_tokens - 1 if name == "transformers"
                     else -(-args.new_tokens // args.chunk_size) * args.chunk_size - 1)
            result["decoders"][name].update(phase_split(step, statistics.median(first_times[name]), steps))
            # the one-token call must start the same continuation
            same_first = first_outputs[name][:, 0] == outputs[name][:, 0]
            result["decoders"][name]["first_token_agrees"] = bool(same_first.all())
    kv = result["decoders"]["kv_cache"]["tokens_per_s"]
    for name, row in result["decoders"].items():
        row["kv_cache_speedup"] = kv / row["tokens_per_s"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['config']['params_m']}M-param Llama (d={cfg.hidden_size}, {cfg.num_layers} layers, "
          f"vocab {cfg.vocab_size}), batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"greedy, {result['device']}; median of {args.rounds} interleaved rounds")
    print("| decoder | tokens/s | kv_cache speed-up | tokens equal to kv_cache | first token ms | decode step ms |")
    print("|---|---|---|---|---|---|")
    for name, row in result["decoders"].items():
        split = (f"{1e3 * row['first_token_s']:.1f} | {1e3 * row['decode_step_s']:.2f}" if "first_token_s" in row
                 else "- | -")
        print(f"| {name} | {row['tokens_per_s']:.0f} | {row['kv_cache_speedup']:.2f}x | "
              f"{100 * row['token_agreement_with_kv_cache']:.1f}% | {split} |")
    print(describe_load(load, during="the timed rounds"))


if __name__ == "__main__":
    main()
