"""The model behind the server, and the batcher that decodes concurrent requests together.

HTTP threads `submit` jobs and wait on futures. One batcher thread owns the sampler: it
takes the first waiting job, keeps collecting while jobs keep arriving (gaps under
`window_s`) until a batch is full, also takes whatever queued while the previous batch
decoded, groups the jobs that can share one sampler call, and runs each group as one
batch (padded to `batch_size` rows). A group shares temperature, top_p and stop strings (the sampler takes one `SamplingParams` per call) and decodes to
the largest max_tokens in it; each row is cut back to its own request's max_tokens.
Greedy rows batch whatever their seed; a seeded sampling job runs alone, so the same
seed gives the same text however requests interleave. A job submitted with `progress`
hears of its rows' tokens after every decoded chunk (streaming).
"""

from __future__ import annotations

import dataclasses
import queue
from collections import deque
import random
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

from msm_jax.sampling import Generation, SamplingParams
from msm_jax.serve import multihost
from msm_jax.serve.protocol import Job


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeOptions:
    tokenizer: Optional[str] = None       # default: the checkpoint's / the HF folder's own
    chat_template: Optional[str] = None   # default: the model family's
    enable_thinking: bool = False
    step: Optional[int] = None
    batch_size: int = 8                   # rows decoded together at most
    window_s: float = 0.01                # how long the first job of a batch waits for company
    mesh: dict = dataclasses.field(default_factory=dict)  # MeshConfig fields


def load_backend(path: str, opts: ServeOptions):
    """A JaxBackend (sampler + codec) for an Orbax run dir or a Hugging Face folder."""
    from eval.backends import BackendConfig, JaxBackend, hf_dir_codec, load_codec
    from msm_jax.config import from_dict
    from msm_jax.sharding import MeshConfig, make_mesh
    mesh_cfg = from_dict(MeshConfig, opts.mesh, {"": "--mesh"}, "mesh")
    if (Path(path) / "config.json").is_file():
        from data_pipeline.chat_templates import DEFAULT_TEMPLATE
        from msm_jax.hf.import_hf import load_hf_model
        mesh = make_mesh(mesh_cfg)
        model = load_hf_model(path, mesh)
        if opts.tokenizer:
            codec = load_codec(opts.tokenizer, opts.chat_template or DEFAULT_TEMPLATE[model.cfg.family],
                               opts.enable_thinking)
        else:
            codec = hf_dir_codec(path, opts.chat_template, opts.enable_thinking)
        return JaxBackend(model, codec, mesh=mesh, batch_size=opts.batch_size)
    return JaxBackend.from_config(BackendConfig(
        kind="jax", path=path, tokenizer=opts.tokenizer, chat_template=opts.chat_template,
        enable_thinking=opts.enable_thinking, step=opts.step, batch_size=opts.batch_size, mesh=mesh_cfg))


Progress = Callable[[int, list[int]], None]  # (choice k of the job, its tokens so far)


@dataclasses.dataclass
class _Pending:
    job: Job
    future: Future
    progress: Optional[Progress] = None


class Engine:
    """Batches jobs from many threads onto one sampler (see the module docstring)."""

    def __init__(self, backend, *, batch_size: int = 8, window_s: float = 0.01, heartbeat_s: float = 30.0):
        self.backend = backend
        self.codec = backend.codec
        self.max_len = backend.sampler.cfg.max_position_embeddings
        self.batch_size = batch_size
        self.window_s = window_s
        self.heartbeat_s = heartbeat_s
        self.batches: deque[int] = deque(maxlen=1024)  # rows of recent sampler calls (tests, benchmark)
        self._queue: queue.Queue[Optional[_Pending]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="msm-serve-batcher", daemon=True)

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, job: Job, progress: Optional[Progress] = None) -> Future:
        """A future of the job's `n` Generations; `progress(k, tokens)` is called from the
        batcher thread after every decoded chunk while row k of the job decodes."""
        fut: Future = Future()
        self._queue.put(_Pending(job, fut, progress))
        return fut

    # -- batcher thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.heartbeat_s)
            except queue.Empty:
                if multihost.multiprocess():
                    multihost.broadcast(multihost.NOOP)  # keep followers' collectives from timing out
                continue
            if first is None:
                break
            pending, closing = self._collect(first)
            for group in _groups(pending):
                self._run(group)
            if closing:
                break
        if multihost.multiprocess():
            multihost.broadcast(multihost.SHUTDOWN)

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """Jobs for the next batch: until it is full, or no job arrived for `window_s` (clients
        released together still reach the server one by one), at most 10 windows in all."""
        pending = [first]
        start = time.monotonic()
        while True:
            rows = sum(p.job.n for p in pending)
            wait = min(self.window_s, start + 10 * self.window_s - time.monotonic())
            try:
                item = self._queue.get(timeout=wait) if rows < self.batch_size and wait > 0 \
                    else self._queue.get_nowait()
            except queue.Empty:
                return pending, False
            if item is None:
                return pending, True
            pending.append(item)

    def _run(self, group: list[_Pending]) -> None:
        prompts = [p.job.prompt for p in group for _ in range(p.job.n)]
        # Padding rows up to whole batches keeps one compiled shape per prompt length: a new
        # row count would recompile mid-serving (minutes for a large model on a slice).
        prompts += [prompts[0]] * (-len(prompts) % self.batch_size)
        params = dataclasses.replace(group[0].job.params, max_tokens=max(p.job.params.max_tokens for p in group),
                                     seed=_seed(group[0].job))
        self.batches.append(sum(p.job.n for p in group))
        try:
            if multihost.multiprocess():
                multihost.broadcast(multihost.batch_message(prompts, params))
            gens = self.generate(prompts, params, on_tokens=_progress_of(group))
        except Exception as e:  # the request fails, the server keeps serving
            for p in group:
                p.future.set_exception(e)
            return
        i = 0
        for p in group:
            p.future.set_result(gens[i:i + p.job.n])
            i += p.job.n

    def generate(self, prompts: list[list[int]], params: SamplingParams, on_tokens=None) -> list[Generation]:
        """One sampler call; followers on other processes run exactly this (without on_tokens)."""
        return self.backend.sampler.generate(prompts, params, eos_ids=self.codec.eos_ids,
                                             detokenize=self.codec.decode,
                                             batch_size=self.batch_size, on_tokens=on_tokens)


def _progress_of(group: list[_Pending]):
    """The sampler's per-row callback for a group: row -> (job, k) -> that job's progress.
    None when no job streams. A failing listener (a client gone) never stops the batch."""
    rows = [(p, k) for p in group for k in range(p.job.n)]
    if not any(p.progress for p in group):
        return None

    def on_tokens(row: int, tokens: list[int]) -> None:
        if row < len(rows) and rows[row][0].progress is not None:
            p, k = rows[row]
            try:
                p.progress(k, tokens)
            except Exception:  # noqa: BLE001 - the listener's problem, not the batch's
                pass
    return on_tokens


def _seed(job: Job) -> int:
    return job.seed if job.seed is not None else random.randrange(2**31)


def _groups(pending: list[_Pending]) -> list[list[_Pending]]:
    """Jobs that can share one sampler call, in arrival order of each group's first job."""
    groups: dict[tuple, list[_Pending]] = {}
    for i, p in enumerate(pending):
        sp = p.job.params
        if sp.temperature == 0:
            key = ("greedy", sp.stop)
        elif p.job.seed is None:
            key = ("sample", sp.temperature, sp.top_p, sp.stop)
        else:
            key = ("seeded", i)
        groups.setdefault(key, []).append(p)
    return list(groups.values())
