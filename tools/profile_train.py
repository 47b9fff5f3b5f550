"""Per-op-class profile of one train step: msm-jax (XLA:CPU) vs transformers + torch.

  python tools/profile_train.py [--steps 3] [--set scan_layers=false] [--json]

The 5.28M reference config of tools/bench_train.py (fp32 AdamW, batch 8 x 256 packed rows)
is traced on both stacks. JAX: a jax.profiler trace gives one event per executed XLA thunk
(HLO instruction); each is classed by the source line and op path XLA keeps in the
compiled HLO's metadata (`transpose(` marks the backward pass). Torch: torch.profiler
events, classed by op name and their autograd/record_function ancestors. Times are self
times (nested events subtracted) summed over threads, per step; the thunks of one step
run almost entirely one at a time, so the sum is close to the step's wall time.

Classes: dense matmuls (q/k/v/o, MLP, LM head) forward and backward; attention core
(scores, mask, softmax, probs @ v, forward and backward); norms and other elementwise ops
(RMSNorm, RoPE, SiLU, residuals, GQA repeats); embedding (lookup and its gradient);
softmax/loss (log-softmax over the vocabulary, target pick, sums); optimizer (AdamW,
clipping, gradient norm, the non-finite guard); scan/copies (layer-stack slicing and
stacking, buffer initialisation, copies, control flow); other.

The classes are CPU time, not wall time: XLA runs independent thunks on both cores at once
(our classes add up to more than the step), while a torch op's self time is the wall time of
the op on the calling thread (its OpenMP workers' time is not added). So a class's ratio is
not its share of the wall-time gap. `--ablate-attention` measures that share for the
attention core directly: both stacks also train with the core replaced by a stand-in of the
same shapes (q times v, no scores), steps interleaved, and the difference in median step
time is what attention costs each stack per step.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402

CLASSES = ["matmul fwd", "matmul bwd", "attention", "norms/elementwise", "embedding", "softmax/loss",
           "optimizer", "scan/copies", "other"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="5.28M", choices=sorted(bench_train.REFERENCE))
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="model config override")
    p.add_argument("--steps", type=int, default=3, help="profiled steps per stack (after two warm ones)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--remat", default="projections", help="remat policy (as bench_train.py's --remat)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--top", type=int, default=0, help="also list the N most expensive XLA thunks")
    p.add_argument("--ablate-attention", action="store_true", help="instead of tracing: wall time per step with "
                   "and without the attention core on both stacks (interleaved; --steps 12 or more)")
    return p.parse_args()


# -- JAX ------------------------------------------------------------------------------------

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\b([a-z][\w\-]*)\(")
_META = re.compile(r'metadata=\{op_name="([^"]*)"[^}]*?stack_frame_id=(\d+)')


def hlo_sources(hlo: str) -> dict[str, tuple[str, str, str, str]]:
    """instruction name -> (opcode, op_name, source file basename, source function)."""
    files, funcs, locs, frames = {}, {}, {}, {}
    section = None
    out = {}
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if section and line and line[0].isdigit():
            idx, _, rest = line.partition(" ")
            if section == "FileNames":
                files[idx] = os.path.basename(rest.strip('"'))
            elif section == "FunctionNames":
                funcs[idx] = rest.strip('"')
            elif section == "FileLocations":
                f = re.search(r"file_name_id=(\d+) function_name_id=(\d+)", rest)
                locs[idx] = (files.get(f.group(1), ""), funcs.get(f.group(2), ""))
            else:
                frames[idx] = locs.get(re.search(r"file_location_id=(\d+)", rest).group(1), ("", ""))
            continue
        section = None
        m = _INSTR.match(line)
        if not m:
            continue
        meta = _META.search(line)
        op_name, src = ("", ("", "")) if meta is None else (meta.group(1), frames.get(meta.group(2), ("", "")))
        kind = "dot" if ("__ynn_fusion" in line or "__onednn" in line) else m.group(2)
        out[m.group(1)] = (kind, op_name, *src)
    return out


_SCAN_OPS = ("copy", "while", "tuple", "get-tuple-element", "bitcast", "parameter", "conditional", "call",
             "dynamic-slice", "dynamic-update-slice")
_OPTAX_FILES = ("_combining.py", "transform.py", "numerics.py", "_clipping.py", "_masking.py", "_adding.py",
                "update.py", "base.py", "linear_algebra.py", "_tree_math.py")


def jax_class(kind: str, op_name: str, file: str, func: str) -> str:
    """The op class of one HLO instruction from its opcode, op path and innermost source frame."""
    bwd = "transpose(" in op_name
    last = op_name.rsplit("/", 1)[-1]
    if kind in _SCAN_OPS or not op_name or last in ("dynamic_slice", "dynamic_update_slice", "broadcast_in_dim") \
            or func.startswith("Decoder.hidden_states"):
        return "scan/copies"  # layer-stack slicing and stacking, scan buffers, copies
    if file == "attention.py":
        return "attention"
    if last == "dot_general" and (func == "Linear.__call__" or file == "loss.py"):
        return "matmul bwd" if bwd else "matmul fwd"
    if file == "loss.py":
        return "softmax/loss"
    if func == "Decoder.embed":
        return "embedding"
    if file in ("decoder.py", "rope.py", "sharding.py"):
        return "norms/elementwise"
    if file in ("step.py", "optimizer.py") + _OPTAX_FILES:
        return "optimizer"
    return "other"


def self_times(events) -> list[tuple[str, float]]:
    """(name, self ns) for events of one thread, nested events subtracted from their parent."""
    events = sorted(events, key=lambda e: (e.start_ns, -e.duration_ns))
    out, stack = [], []  # stack of [name, end, self]
    for e in events:
        while stack and stack[-1][1] <= e.start_ns:
            out.append((stack[-1][0], stack.pop()[2]))
        if stack:
            stack[-1][2] -= e.duration_ns
        stack.append([e.name, e.start_ns + e.duration_ns, e.duration_ns])
    out.extend((s[0], s[2]) for s in stack)
    return out


def profile_jax(cfg, args, steps: int):
    import jax
    import numpy as np

    from msm_jax.sharding import use_rules

    ns = argparse.Namespace(mesh="data=1,fsdp=-1,tensor=1", batch=args.batch, seq=args.seq, grad_accum=1, lora_rank=0)
    spec, tx, step = bench_train.build(cfg, ns)
    from msm_jax.train.state import init_state, random_params

    state = init_state(spec, tx, *random_params(spec, 0))
    batch = {k: jax.device_put(v, spec.batch_sharding())
             for k, v in bench_train.packed_batch(cfg, args.batch, args.seq).items()}
    with jax.set_mesh(spec.mesh), use_rules(spec.rules):
        hlo = step.jitted.lower(state, batch).compile().as_text()
    sources = hlo_sources(hlo)
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
        wall = (time.perf_counter() - t0) / steps
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)[0])
    per_class = collections.Counter()
    per_thunk = collections.Counter()
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for name, t in self_times(list(line.events)):
                if name.startswith("ThunkExecutor"):
                    continue
                src = sources.get(name)
                cls = "other" if src is None else jax_class(*src)
                per_class[cls] += t / 1e6 / steps
                per_thunk[(name, cls, "" if src is None else f"{src[2]}:{src[3]}")] += t / 1e6 / steps
    return wall * 1e3, per_class, per_thunk


# -- torch ----------------------------------------------------------------------------------

_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
_COPY = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy", "aten::empty_like",
         "aten::empty", "aten::empty_strided", "aten::zeros", "aten::zero_", "aten::fill_"}


def torch_class(name: str, ancestors: list[str]) -> str:
    chain = [name] + ancestors
    joined = " ".join(chain).lower()
    if "optimizer" in chain:
        return "optimizer"
    if "scaled_dot_product" in joined or "scaleddotproduct" in joined:
        return "attention"
    if any(k in joined for k in ("log_softmax", "logsoftmax", "nll_loss", "nllloss", "cross_entropy")):
        return "softmax/loss"
    if "embedding" in joined:
        return "embedding"
    bwd = any("Backward" in a for a in chain)
    if name in _MATMUL or any(a in _MATMUL for a in ancestors):
        return "matmul bwd" if bwd else "matmul fwd"
    if name in _COPY:
        return "scan/copies"
    if name.startswith("aten::"):
        return "norms/elementwise"
    return "other"


def profile_torch(cfg, args, steps: int):
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import AutoConfig, AutoModelForCausalLM

    from msm_jax.hf.hf_config import hf_config_from_model

    hf = hf_config_from_model(cfg, "float32")
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**{k: v for k, v in hf.items() if k != "architectures"})).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    data = bench_train.packed_batch(cfg, args.batch, args.seq)
    ids = torch.tensor(data["tokens"], dtype=torch.long)
    pos = torch.tensor(data["positions"], dtype=torch.long)

    def one():
        out = model(input_ids=ids, position_ids=pos, labels=ids)
        out.loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(2):
        one()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
        wall = (time.perf_counter() - t0) / steps
    per_class = collections.Counter()
    for ev in prof.events():
        ancestors, p = [], ev.cpu_parent
        while p is not None:
            ancestors.append(p.name)
            p = p.cpu_parent
        per_class[torch_class(ev.name, ancestors)] += ev.self_cpu_time_total / 1e3 / steps
    return wall * 1e3, per_class, torch.get_num_threads()


# -- attention ablation ---------------------------------------------------------------------

def _stand_in(q, k, v):
    """Same shapes in and out as attention, no scores: q times v (GQA heads repeated)."""
    import jax.numpy as jnp

    return q * jnp.repeat(v, q.shape[2] // v.shape[2], axis=2)


def _torch_stand_in(q, k, v, *args, **kwargs):
    """The torch counterpart on [B, H, T, D] (k, v may have fewer heads: GQA)."""
    if v.shape[1] != q.shape[1]:
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return q * v


@contextlib.contextmanager
def _replaced(owner, name: str, value):
    """`owner.name` (a module attribute or dict key) set to `value` for the block."""
    get, put = (owner.get, owner.__setitem__) if isinstance(owner, dict) else \
        (lambda n: getattr(owner, n), lambda n, v: setattr(owner, n, v))
    saved = get(name)
    put(name, value)
    try:
        yield
    finally:
        put(name, saved)


def ablate_attention(cfg, args) -> dict:
    """Median step times (ms) of both stacks with and without the attention core."""
    import statistics

    import torch.nn.functional as F

    from msm_jax.models import attention

    ns = argparse.Namespace(mesh="data=1,fsdp=-1,tensor=1", batch=args.batch, seq=args.seq, grad_accum=1, lora_rank=0)
    runs = {"jax": bench_train.jax_stepper(cfg, ns)[1]}
    with _replaced(attention._IMPLS, "xla", lambda q, k, v, *rest: _stand_in(q, k, v)):
        runs["jax without attention"] = bench_train.jax_stepper(cfg, ns)[1]  # traced (and compiled) here
    runs["torch"] = bench_train.torch_stepper(cfg, ns)
    with _replaced(F, "scaled_dot_product_attention", _torch_stand_in):
        torch_without = bench_train.torch_stepper(cfg, ns)

    def torch_without_step() -> float:  # eager: the stand-in must be in place at every step
        with _replaced(F, "scaled_dot_product_attention", _torch_stand_in):
            return torch_without()

    runs["torch without attention"] = torch_without_step
    times = bench_train.interleaved_times(list(runs.values()), args.steps)
    return {name: 1e3 * statistics.median(t) for name, t in zip(runs, times)}


def main() -> None:
    args = parse_args()
    from msm_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages()  # as `msm` and bench_train.py run
    ns = argparse.Namespace(model=None, set=bench_train.REFERENCE[args.config] + args.set, dtype="float32",
                            remat=args.remat)
    cfg = bench_train.model_config(ns)
    if args.ablate_attention:
        ms = ablate_attention(cfg, args)
        result = {"config": args.config, "steps": args.steps, "load_1min": os.getloadavg()[0], "step_ms": ms,
                  "attention_ms": {s: ms[s] - ms[f"{s} without attention"] for s in ("jax", "torch")}}
        if args.json:
            print(json.dumps(result))
            return
        print(f"{args.config}, scan_layers={str(cfg.scan_layers).lower()}, median of {args.steps} interleaved steps, "
              f"load {result['load_1min']:.2f}")
        print("| stack | step ms | without attention | attention ms/step |\n|---|---|---|---|")
        for s, label in (("jax", "msm-jax"), ("torch", "transformers+torch")):
            print(f"| {label} | {ms[s]:.0f} | {ms[s + ' without attention']:.0f} | {result['attention_ms'][s]:.0f} |")
        return
    jax_wall, jax_cls, thunks = profile_jax(cfg, args, args.steps)
    torch_wall, torch_cls, threads = profile_torch(cfg, args, args.steps)
    load = os.getloadavg()[0]
    result = {"config": args.config, "params_m": round(cfg.num_params() / 1e6, 2), "scan_layers": cfg.scan_layers,
              "steps": args.steps, "load_1min": load, "torch_threads": threads,
              "jax_step_ms": jax_wall, "torch_step_ms": torch_wall,
              "classes": {c: {"jax_ms": jax_cls.get(c, 0.0), "torch_ms": torch_cls.get(c, 0.0)} for c in CLASSES}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.config} ({result['params_m']}M), scan_layers={str(cfg.scan_layers).lower()}, batch "
          f"{args.batch} x {args.seq}, fp32 AdamW, {args.steps} profiled steps each, torch {threads} threads, "
          f"load {load:.2f}")
    print("| op class | msm-jax ms/step | torch ms/step | jax/torch |")
    print("|---|---|---|---|")
    for c in CLASSES:
        j, t = jax_cls.get(c, 0.0), torch_cls.get(c, 0.0)
        print(f"| {c} | {j:.1f} | {t:.1f} | {j / t:.2f} |" if t else f"| {c} | {j:.1f} | {t:.1f} | - |")
    js, ts = sum(jax_cls.values()), sum(torch_cls.values())
    print(f"| sum of classes | {js:.1f} | {ts:.1f} | {js / ts:.2f} |")
    print(f"| step wall time (profiled) | {jax_wall:.1f} | {torch_wall:.1f} | {jax_wall / torch_wall:.2f} |")
    if args.top:
        print(f"\nTop {args.top} XLA thunks (ms/step, class, source):")
        for (name, cls, src), t in thunks.most_common(args.top):
            print(f"  {t:8.2f}  {name:40s} {cls:18s} {src}")


if __name__ == "__main__":
    main()
