"""`msm eval inspect`: a public Inspect task (default `inspect_evals/agentic_misalignment`) run
against `msm serve` on a checkpoint, scored by Inspect's own scorers, summarized like our evals.

The model is served by a `msm serve` subprocess on a free local port and reached through
Inspect's OpenAI-compatible provider (`openai-api/msm/NAME`, base URL passed directly).
The grader model goes through Inspect's own provider for it (the Anthropic one reads
ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL). Each condition (one set of task arguments from
`grid`) is one `inspect_ai.eval` call with its own log folder under out_dir/logs; a condition
whose log finished is not run again, so a rerun does only what is missing. Scores are read
back from the .eval logs with inspect_ai's log API: per condition a rate with a Wilson
interval for every score key, and over conditions the mean of rates with a stratified
bootstrap interval (what `msm eval agentic` reports).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from eval.backends import BackendConfig
from msm_jax.errors import UserError
from msm_jax.outputs import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_START_TIMEOUT_S = 1800  # loading a 32B checkpoint onto a slice takes minutes


@dataclasses.dataclass(frozen=True, kw_only=True)
class InspectConfig:
    """Which task, which conditions, how to sample, who grades."""

    backend: BackendConfig       # the model `msm serve` loads: a checkpoint (jax) or a HF folder
    out_dir: str = "runs/eval/inspect"
    task: str = "inspect_evals/agentic_misalignment"
    task_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # -T for every condition
    # Each entry maps task arguments to lists of values; a condition is one point of one entry's
    # product. The key `task` picks another task for that entry (e.g. eval/inspect_tasks.py@msm_agentic).
    grid: tuple[dict[str, tuple[Any, ...]], ...] = ()
    epochs: int = 1              # samples per condition (agentic_misalignment has one sample per condition)
    temperature: float = 0.7
    max_tokens: int = 4096
    grader_model: Optional[str] = "anthropic/claude-sonnet-4-6"  # task argument `grader_model`; null: the task's
    max_connections: int = 0     # concurrent requests to the server; 0: backend.batch_size
    limit: Optional[int] = None  # samples per condition before epochs (smoke tests)
    retry_on_error: int = 3      # retries of a sample whose generation or grading failed
    fail_on_error: float = 0.05  # share of samples that may still fail before the condition fails
    model_name: str = "msm"      # the served model's name: Inspect sees openai-api/msm/NAME

    def validate(self) -> None:
        if self.epochs < 1 or self.max_tokens < 1 or self.max_connections < 0:
            raise ValueError("epochs and max_tokens must be positive, max_connections >= 0")
        for i, entry in enumerate(self.grid):
            bad = [k for k, v in entry.items() if not v]
            if bad:
                raise ValueError(f"grid[{i}].{bad[0]} must be a non-empty list of values")


def conditions(cfg: InspectConfig) -> list[dict]:
    """Task arguments of every condition, in grid order, without repeats."""
    out: list[dict] = []
    for entry in cfg.grid or ({},):
        for values in itertools.product(*entry.values()):
            args = {**cfg.task_args, **dict(zip(entry.keys(), values))}
            if cfg.grader_model:
                args["grader_model"] = cfg.grader_model
            if args not in out:
                out.append(args)
    return out


def condition_id(args: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in args.items() if k != "grader_model") or "default"


def _folder(cid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]", "_", cid)


# -- the server ------------------------------------------------------------------------------


def serve_argv(cfg: InspectConfig) -> list[str]:
    b = cfg.backend
    argv = [sys.executable, "-m", "msm_jax.cli", "serve", b.path, "--host", "127.0.0.1", "--port", "0",
            "--model-name", cfg.model_name, "--batch-size", str(b.batch_size), "--max-tokens", str(cfg.max_tokens)]
    for flag, value in (("--tokenizer", b.tokenizer), ("--chat-template", b.chat_template), ("--step", b.step)):
        if value is not None:
            argv += [flag, str(value)]
    if b.enable_thinking:
        argv.append("--enable-thinking")
    for axis in ("data", "fsdp", "tensor"):
        argv += ["--mesh", f"{axis}={getattr(b.mesh, axis)}"]
    return argv


class Served:
    """`msm serve` in a subprocess for the length of a `with` block; `.url` is its /v1 base."""

    def __init__(self, cfg: InspectConfig, log_path: Path):
        self.argv, self.log_path, self.url = serve_argv(cfg), log_path, ""

    def __enter__(self) -> "Served":
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        timer = threading.Timer(SERVE_START_TIMEOUT_S, self.proc.kill)
        timer.start()
        line = self.proc.stdout.readline()
        while line and "listening on" not in line:  # libraries may print first
            line = self.proc.stdout.readline()
        timer.cancel()
        if "listening on" not in line:
            self.__exit__(None, None, None)
            raise UserError(f"msm serve did not start (exit {self.proc.returncode}); see {self.log_path}")
        self.url = line.split()[-1]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


# -- running and reading -----------------------------------------------------------------------


def _finished_log(log_dir: Path) -> Optional[str]:
    from inspect_ai.log import list_eval_logs, read_eval_log
    if not log_dir.is_dir():
        return None
    for info in list_eval_logs(str(log_dir)):
        if read_eval_log(info, header_only=True).status == "success":
            return info.name
    return None


def task_spec(task: str) -> str:
    """A registry name as is; a `FILE.py@task` found from here or from the repository root."""
    path, sep, name = task.partition("@")
    if sep and path.endswith(".py") and not Path(path).is_file() and (REPO_ROOT / path).is_file():
        return f"{REPO_ROOT / path}@{name}"
    return task


def run_condition(cfg: InspectConfig, args: dict, url: str, log_dir: Path) -> str:
    """One `inspect eval` of the task with `args`; the path of its log."""
    import inspect_ai
    os.environ.setdefault("MSM_API_KEY", "msm-serve")  # the provider wants a key; msm serve ignores it
    args = dict(args)
    task = task_spec(args.pop("task", cfg.task))
    logs = inspect_ai.eval(
        task, task_args=args, model=f"openai-api/msm/{cfg.model_name}", model_base_url=url,
        epochs=cfg.epochs, temperature=cfg.temperature, max_tokens=cfg.max_tokens, limit=cfg.limit,
        max_connections=cfg.max_connections or cfg.backend.batch_size, log_dir=str(log_dir), display="none",
        retry_on_error=cfg.retry_on_error, fail_on_error=cfg.fail_on_error)
    log = logs[0]
    if log.status != "success":
        message = log.error.message if log.error else log.status
        raise UserError(f"inspect eval {task} ({condition_id(args)}) ended {log.status}: {message}; "
                        f"log in {log.location}")
    return log.location


def sample_scores(log_path: str) -> tuple[dict[str, list[float]], list[str]]:
    """(score key -> one value per scored sample, error messages of failed samples); a scorer
    with dict values gives one key per entry."""
    from inspect_ai.log import read_eval_log
    out: dict[str, list[float]] = {}
    errors: list[str] = []
    for sample in read_eval_log(log_path).samples or []:
        if sample.error is not None:
            errors.append(sample.error.message)
        for scorer, score in (sample.scores or {}).items():
            values = score.value if isinstance(score.value, dict) else {scorer: score.value}
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out.setdefault(key, []).append(float(value))
    if not out:
        first = f": {errors[0]}" if errors else ""
        raise UserError(f"{log_path}: no scored sample ({len(errors)} failed{first})")
    return out, errors


def summarize(cfg: InspectConfig, per_condition: dict[str, dict]) -> dict:
    """Rates per condition and averaged over conditions (per score key, first key = headline)."""
    from eval.stats import mean_of_rates_summary, rate_summary
    keys = list(dict.fromkeys(k for c in per_condition.values() for k in c["scores"]))
    table = {}
    for cid, c in per_condition.items():
        table[cid] = {"args": c["args"], "log": c["log"], "failed_samples": len(c["errors"]),
                      **{k: rate_summary(int(sum(v)), len(v)) for k, v in c["scores"].items()}}
    summary = {"eval": "inspect", "task": cfg.task, "grader_model": cfg.grader_model, "epochs": cfg.epochs,
               "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "num_conditions": len(per_condition)}
    for i, key in enumerate(keys):
        groups = [[int(x) for x in c["scores"].get(key, [])] for c in per_condition.values()]
        summary["average" if i == 0 else f"average_{key}"] = {"metric": key, **mean_of_rates_summary(groups)}
    summary["failed_samples"] = sum(len(c["errors"]) for c in per_condition.values())
    if keys and "scenario" in next(iter(per_condition.values()))["args"]:
        scenarios: dict[str, list] = {}
        for c in per_condition.values():
            scenarios.setdefault(c["args"]["scenario"], []).append([int(x) for x in c["scores"].get(keys[0], [])])
        summary["by_scenario"] = {s: mean_of_rates_summary(g) for s, g in scenarios.items()}
    summary["per_condition"] = table
    return summary


def evaluate(cfg: InspectConfig) -> dict:
    """Serve the model, run every condition that has no finished log, write summary.json."""
    out = Path(cfg.out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = {condition_id(a): a for a in conditions(cfg)}
    logs = {cid: _finished_log(out / "logs" / _folder(cid)) for cid in todo}
    missing = [cid for cid, log in logs.items() if log is None]
    if missing:
        with Served(cfg, out / "serve.log") as server:
            for cid in missing:
                logs[cid] = run_condition(cfg, todo[cid], server.url, out / "logs" / _folder(cid))
    per_condition = {}
    for cid in todo:
        scores, errors = sample_scores(logs[cid])
        per_condition[cid] = {"args": {k: v for k, v in todo[cid].items() if k != "grader_model"},
                              "log": logs[cid], "scores": scores, "errors": errors}
    summary = summarize(cfg, per_condition)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary
