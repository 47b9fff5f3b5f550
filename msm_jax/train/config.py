"""The run config of one training stage (midtraining or SFT): one YAML, validated on load.

`msm train CONFIG.yaml key=value ...` loads `RunConfig`. Sections: model, mesh, data (the
loader), train (batch, steps, loss, accumulation), optimizer, schedule, lora, checkpoint,
init (where the weights come from), eval, logging, distributed.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from data_pipeline.loader import LoaderConfig
from msm_jax.models.config import ModelConfig
from msm_jax.models.lora import LoRAConfig
from msm_jax.sharding import MeshConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    z_loss: float = 0.0  # weight of mean(logsumexp^2), PaLM style; 0 disables it
    vocab_chunks: int = 1  # >1: logits computed chunk by chunk over the vocabulary (bounded memory)

    def validate(self) -> None:
        if self.z_loss < 0 or self.vocab_chunks < 1:
            raise ValueError("z_loss must be >= 0 and vocab_chunks >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    global_batch: int  # rows per optimizer step, over all processes
    seq_len: int
    steps: Optional[int] = None  # None: one pass as given by data.num_epochs
    grad_accum: int = 1  # micro-batches per step, accumulated inside the jitted step
    seed: int = 0  # model init, data order and dropout all derive from it
    loss: LossConfig = LossConfig()
    on_nonfinite: Literal["stop", "skip"] = "stop"  # non-finite loss/grads: stop the run, or skip the update

    def validate(self) -> None:
        if self.global_batch <= 0 or self.seq_len <= 1:
            raise ValueError("global_batch must be positive and seq_len > 1")
        if self.grad_accum <= 0 or self.global_batch % self.grad_accum:
            raise ValueError(f"grad_accum ({self.grad_accum}) must divide global_batch ({self.global_batch})")
        if self.steps is not None and self.steps <= 0:
            raise ValueError("steps must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    lr: float = 3e-4  # peak learning rate
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # never applied to norms and biases
    clip_norm: Optional[float] = 1.0  # global-norm clipping; null disables it

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    final_lr_ratio: float = 0.1  # cosine/linear decay to lr * final_lr_ratio at the last step

    def validate(self) -> None:
        if self.warmup_steps < 0 or not 0 <= self.final_lr_ratio <= 1:
            raise ValueError("warmup_steps must be >= 0 and final_lr_ratio in [0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    directory: Optional[str] = None  # the Orbax directory (local or gs://); default: run_dir
    every_steps: int = 500
    keep_last: Optional[int] = 3  # null keeps all
    keep_every: Optional[int] = None  # also keep every step that is a multiple of this
    async_save: bool = True

    def validate(self) -> None:
        if self.every_steps <= 0:
            raise ValueError("every_steps must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitConfig:
    """Where the stage's weights start. Neither set: random init from train.seed."""

    from_hf: Optional[str] = None  # a Hugging Face model directory
    from_checkpoint: Optional[str] = None  # another stage's run (or checkpoint) directory
    checkpoint_step: Optional[int] = None  # default: its latest step
    # A LoRA adapter in `from_checkpoint`: keep training it on the same frozen base
    # ("continue", as the paper's AFT continued the MSM adapter; rank, alpha and targets must
    # match) or fold it into the base weights and train a fresh adapter ("merge").
    adapter: Literal["continue", "merge"] = "continue"

    def validate(self) -> None:
        if self.from_hf and self.from_checkpoint:
            raise ValueError("set at most one of from_hf and from_checkpoint")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    data: Optional[LoaderConfig] = None  # held-out shards; null disables eval
    every_steps: int = 0
    batches: int = 4

    def validate(self) -> None:
        if self.data is not None and (self.every_steps <= 0 or self.batches <= 0):
            raise ValueError("with eval data, every_steps and batches must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    every_steps: int = 1
    progress_bar: bool = True
    tensorboard: bool = True
    plot: bool = True  # loss_curve.png at the end
    device_peak_tflops: Optional[float] = None  # for MFU; default: looked up from the device kind


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """jax.distributed: `auto` initialises when a coordinator is configured (here or in
    MSM_COORDINATOR_ADDRESS/MSM_NUM_PROCESSES/MSM_PROCESS_ID) or on a multi-host TPU VM."""

    mode: Literal["auto", "on", "off"] = "auto"
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    run_dir: str  # checkpoints, metrics, resolved config and summary go here (local or gs://)
    train: TrainConfig
    data: Optional[LoaderConfig] = None  # required by `msm train`; tests may pass a loader object
    model: Optional[ModelConfig] = None  # optional with init.from_*: taken from the source then
    mesh: MeshConfig = MeshConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    lora: Optional[LoRAConfig] = None  # null: full fine-tuning
    checkpoint: CheckpointConfig = CheckpointConfig()
    init: InitConfig = InitConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    distributed: DistributedConfig = DistributedConfig()

    def validate(self) -> None:
        if self.model is None and not (self.init.from_hf or self.init.from_checkpoint):
            raise ValueError("model: required unless init.from_hf or init.from_checkpoint names the weights")
