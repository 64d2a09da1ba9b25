"""The training loop of ``python -m train.pretrain``, torchtitan-style: a ``Trainer`` built from explicit
functions, then a short loop.

    build the model on the meta device -> parallelize it (activation checkpointing, compile, fully_shard per
    block) -> allocate and initialize the weights ((seed, name) draws) -> optimizer, data, logger ->
    resume -> loop: learning rate, micro-batches (gradients synchronized on the last), clip, step, log,
    evaluate, save.

The learning rate is a function of the optimizer step (``train.schedule``), the data position of the global
step (``train.data``), the initial weights of parameter names (``train.parallel``): so every process layout
with the same global batch trains the same model, up to the order floating-point sums are taken in.

``out_dir`` may be on an object store (``gs://bucket/run``): checkpoints are written there
(``train.training_state``), and so are the logs. The loggers write local files (Lightning's CSV logger
appends, which object stores cannot), so with a remote ``out_dir`` they write to a local temporary folder
that rank 0 copies to ``out_dir/logs/`` after each checkpoint and at the end of the run: a cluster user finds
the run's metrics.csv beside its checkpoints, each of which carries hyperparameters.yaml.
"""

from __future__ import annotations

import math
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from lightning.fabric.utilities.throughput import measure_flops
from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.model import GPT, Config
from litgpt.utils import (
    choose_logger,
    chunked_cross_entropy,
    copy_config_files,
    instantiate_torch_optimizer,
)
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from shared.format.dataset import DatasetError
from shared.format.files import is_remote, join, write_atomic
from train.checkpoint import Where, child, copy_dataset_description, load_lit_weights, name_of
from train.data import CodecShards, own_line
from train.launch import Ranks
from train.metrics import peak_flops
from train.parallel import PRECISIONS, blocks_to_checkpoint, describe, init_weights, parallelize
from train.schedule import Schedule
from train.training_state import is_rank_zero, load, save


@dataclass
class Settings:
    """A run, as ``python -m train.pretrain`` resolved it from its command line."""

    config: Config
    out_dir: Where  # a local Path, or a gs:// / s3:// URL
    precision: str
    data: Any  # a LitGPT DataModule (train.data.CodecShards for codec-LM datasets)
    train: TrainArgs
    eval: EvalArgs
    log: LogArgs
    optimizer: str | dict
    devices: int
    num_nodes: int
    seed: int
    logger_name: str
    schedule: Schedule
    resume_from: Where | None = None
    initial_checkpoint_dir: Where | None = None
    tokenizer_dir: Path | None = None
    activation_checkpointing: str | None = "none"
    hyperparameters: dict[str, Any] | None = None  # the parsed command line, for each checkpoint

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def accumulation(self) -> int:
        return self.train.global_batch_size // (self.world_size * self.train.micro_batch_size)

    @property
    def context(self) -> int:
        return self.train.max_seq_length or self.config.block_size


# ---- building the parts ---------------------------------------------------------------------------
def build_mesh(settings: Settings, ranks: Ranks) -> DeviceMesh | None:
    """(nodes, devices per node): shard within a node, replicate across nodes. None on one process."""
    if ranks.world_size == 1:
        return None
    return init_device_mesh(ranks.device.type, (settings.num_nodes, settings.devices),
                            mesh_dim_names=("replicate", "shard"))


def build_model(settings: Settings, mesh: DeviceMesh | None, device: torch.device) -> GPT:
    """LitGPT's GPT on the meta device, parallelized, then allocated on ``device`` and initialized."""
    dtype, mp_policy = PRECISIONS[settings.precision]
    with torch.device("meta"):
        model = GPT(settings.config).to(dtype)
    if settings.train.tie_embeddings:
        model.transformer.wte.weight = model.lm_head.weight
    parallelize(model, mesh, checkpointed=blocks_to_checkpoint(settings.activation_checkpointing),
                compile_blocks=True, mp_policy=mp_policy)  # TORCH_COMPILE_DISABLE=1 turns compiling off
    model.to_empty(device=device)
    init_weights(model, settings.seed)
    if settings.train.max_seq_length:
        model.max_seq_length = settings.train.max_seq_length
    return model


def build_optimizer(settings: Settings, model: GPT, device: torch.device) -> torch.optim.Optimizer:
    return instantiate_torch_optimizer(settings.optimizer, model.parameters(), fused=device.type == "cuda")


def flops_per_sequence(settings: Settings) -> float:
    """Forward and backward FLOPs of one sequence (LitGPT's count, on a model on the meta device): what MFU
    divides by. Recomputed forwards of checkpointed blocks do not count (MFU, not HFU)."""
    with torch.device("meta"):
        model = GPT(settings.config)
        tokens = torch.randint(0, 1, (1, settings.context))
        return measure_flops(model, lambda: model(tokens), lambda y: chunked_cross_entropy(y, tokens, chunk_size=0))


def mean_over_ranks(value: torch.Tensor) -> float:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value.item()


def peak_memory_gb(device: torch.device) -> float:
    """The most this process has held: allocated GPU memory, or the CPU process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


class Trainer:
    def __init__(self, settings: Settings, ranks: Ranks) -> None:
        self.settings, self.ranks, self.device = settings, ranks, ranks.device
        torch.manual_seed(settings.seed)  # nothing random is drawn from it in training; dropout-free Llama
        mesh = build_mesh(settings, ranks)
        self.model = build_model(settings, mesh, self.device)
        self.optimizer = build_optimizer(settings, self.model, self.device)
        self.schedule = settings.schedule
        data = settings.data
        data.connect(batch_size=settings.train.micro_batch_size, max_seq_length=self.model.max_seq_length)
        data.setup()
        self.train_loader, self.val_loader = data.train_dataloader(), data.val_dataloader()
        self.log_root, self.logger = None, None
        if is_rank_zero():
            self.log_root, options = log_place(settings)
            self.logger = choose_logger(settings.logger_name, self.log_root, name=f"pretrain-{settings.config.name}",
                                        resume=settings.resume_from is not None,
                                        log_interval=settings.train.log_interval, log_args=asdict(settings.log),
                                        **options)
        self.flops_per_step = flops_per_sequence(settings) * settings.train.micro_batch_size * settings.accumulation
        self.peak_flops = peak_flops(self.device, settings.precision)
        self.step = 0
        self.print(f"{settings.config.name}: {sum(p.numel() for p in self.model.parameters()):,} parameters "
                   f"({settings.precision}); {ranks.world_size} process(es) x micro-batch "
                   f"{settings.train.micro_batch_size} x {settings.accumulation} accumulation = global batch "
                   f"{settings.train.global_batch_size}; {self.schedule.max_steps} optimizer steps "
                   f"({self.schedule.warmup_steps} warmup)")
        self.print(describe(self.model))
        if mesh is not None:
            self.print(f"FSDP2: {len(self.model.transformer.h)} blocks and the root sharded over a "
                       f"{tuple(mesh.shape)} mesh (nodes x devices per node)")

    def print(self, message: str) -> None:
        if is_rank_zero():
            print(message, flush=True)

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self) -> None:
        self.start()
        if self.settings.eval.initial_validation and self.step == 0:
            self.evaluate()
        batches = iter(self.train_loader)
        interval_start, interval_steps = time.perf_counter(), 0
        while self.step < self.schedule.max_steps:
            self.step += 1
            lr = self.schedule.at(self.step)
            loss, grad_norm = self.train_step(batches, lr)
            interval_steps += 1
            if self.step % self.settings.train.log_interval == 0 or self.step == self.schedule.max_steps:
                self.log(loss, lr, grad_norm, interval_steps, time.perf_counter() - interval_start)
                interval_start, interval_steps = time.perf_counter(), 0
            if self.step % self.settings.eval.interval == 0:
                self.evaluate()
            if self.settings.train.save_interval and self.step % self.settings.train.save_interval == 0:
                self.save(child(self.settings.out_dir, f"step-{self.step:08d}"))
        if self.settings.eval.final_validation and self.step % self.settings.eval.interval:
            self.evaluate()  # (unless the last step just did)
        self.save(child(self.settings.out_dir, "final"))
        if self.logger is not None:
            self.logger.finalize("success")
            self.copy_logs()
            if is_remote(self.settings.out_dir):  # all copied: the local folder was only a staging place
                shutil.rmtree(self.log_root, ignore_errors=True)

    def train_step(self, batches: Any, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of ``accumulation`` micro-batches; the mean loss and the gradient norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accumulation, total = self.settings.accumulation, torch.zeros((), device=self.device)
        for micro_step in range(accumulation):
            batch = next(batches).to(self.device, non_blocking=True)
            last = micro_step == accumulation - 1
            if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last only
                self.model.set_requires_gradient_sync(last)
            loss = self.loss(batch)
            (loss / accumulation).backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.train.max_norm or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / accumulation, grad_norm

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a batch of windows (inputs and targets shifted by one)."""
        mixed = self.settings.precision == "bf16-mixed"  # fp32 weights, bf16 matmuls; the *-true precisions: as stored
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=mixed):
            return chunked_cross_entropy(self.model(batch[:, :-1]), batch[:, 1:])

    @torch.no_grad()
    def evaluate(self) -> None:
        """The mean loss over ``eval.max_iters`` validation batches of every rank."""
        self.model.eval()
        losses = []
        try:
            for index, batch in enumerate(self.val_loader):
                if index >= self.settings.eval.max_iters:
                    break
                losses.append(self.loss(batch.to(self.device)))
        except DatasetError as error:
            raise own_line(error) from None
        self.model.train()
        val_loss = mean_over_ranks(torch.stack(losses).mean())
        self.print(f"step {self.step}: val loss {val_loss:.4f}")
        if self.logger is not None:
            self.logger.log_metrics({"val_loss": val_loss, "val_ppl": math.exp(val_loss)}, step=self.step)

    def log(self, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor, steps: int, seconds: float) -> None:
        loss_value = mean_over_ranks(loss)
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        tokens_per_step = self.settings.train.global_batch_size * self.settings.context
        per_device = steps * tokens_per_step / self.ranks.world_size / seconds
        mfu = steps * self.flops_per_step / seconds / self.peak_flops if self.peak_flops else None
        memory = peak_memory_gb(self.device)
        left = timedelta(seconds=int(seconds / steps * (self.schedule.max_steps - self.step)))
        self.print(f"step {self.step}/{self.schedule.max_steps} | loss {loss_value:.4f} | lr {lr:.3e} | "
                   f"grad norm {norm.item():.3f} | {per_device:,.0f} tokens/s/device | "
                   f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'} | peak memory {memory:.2f} GB | {left} left")
        if self.logger is not None:
            self.logger.log_metrics({
                "loss": loss_value, "learning_rate": lr, "grad_norm": norm.item(),
                "tokens": self.step * tokens_per_step // self.ranks.world_size,
                "total_tokens": self.step * tokens_per_step, "tokens_per_sec_per_device": per_device,
                "mfu": math.nan if mfu is None else mfu, "peak_memory_gb": memory,
                "remaining_time": left.total_seconds()}, step=self.step)
            self.logger.save()  # written as it goes: a run killed later keeps its curve

    # ---- checkpoints --------------------------------------------------------------------------------
    def start(self) -> None:
        """Resume from the checkpoint ``train.pretrain`` chose, or start from --initial_checkpoint_dir's weights."""
        folder = self.settings.resume_from
        if folder is not None:
            self.print(f"Resuming training from {folder}")
            progress = load(folder, self.model, self.optimizer)
            self.step = progress["step"]
            if progress.get("data") is not None:
                self.train_loader.load_state_dict(progress["data"])
        elif self.settings.initial_checkpoint_dir is not None:
            weights = load_lit_weights(self.settings.initial_checkpoint_dir)
            set_model_state_dict(self.model, dict(weights), options=StateDictOptions(full_state_dict=True))

    def save(self, folder: Where) -> None:
        self.print(f"Saving checkpoint to {str(folder)!r}")
        progress = {"step": self.step, "data": self.train_loader.state_dict(), "schedule": self.schedule.describe(),
                    "world_size": self.ranks.world_size, "micro_batch_size": self.settings.train.micro_batch_size,
                    "global_batch_size": self.settings.train.global_batch_size}
        save(folder, self.model, self.optimizer, progress, self.describe_run)
        if name_of(folder) != "final":  # (the run's end copies them after the logger's last lines)
            self.copy_logs()

    def describe_run(self, folder: Where) -> None:
        """What a checkpoint folder carries besides the state: hyperparameters.yaml and model_config.yaml as
        LitGPT writes them, the dataset's description, the tokenizer directory's files."""
        if self.settings.hyperparameters is not None:
            write_atomic(child(folder, "hyperparameters.yaml"),
                         yaml.safe_dump(self.settings.hyperparameters, sort_keys=False))
        write_atomic(child(folder, "model_config.yaml"), yaml.dump(asdict(self.settings.config)))  # as LitGPT's
        if isinstance(self.settings.data, CodecShards):
            copy_dataset_description(self.settings.data.opened(), folder)
        if self.settings.tokenizer_dir is not None:
            with tempfile.TemporaryDirectory() as staged:  # LitGPT copies the files it knows to a local folder
                copy_config_files(Path(self.settings.tokenizer_dir), Path(staged))
                for path in sorted(Path(staged).iterdir()):
                    write_atomic(child(folder, path.name), path.read_bytes())

    def copy_logs(self) -> None:
        """With a remote out_dir: the local log files, as they are now, to ``out_dir/logs/`` (rank 0)."""
        if self.logger is None or not is_remote(self.settings.out_dir):
            return
        self.logger.save()
        for path in sorted(self.log_root.rglob("*")):
            if path.is_file():
                write_atomic(join(str(self.settings.out_dir), str(path.relative_to(self.log_root))), path.read_bytes())


def log_place(settings: Settings) -> tuple[Path, dict[str, Any]]:
    """Where the logger writes: out_dir, or with a remote out_dir a local folder that ``copy_logs`` copies
    there, with the CSV and TensorBoard loggers' next version number in ``out_dir/logs/`` (a resumed run
    writes version_1 beside version_0, as on a local disk)."""
    if not is_remote(settings.out_dir):
        return Path(settings.out_dir), {}
    local = Path(tempfile.mkdtemp(prefix="codec-lm-logs-"))
    if settings.logger_name not in ("csv", "tensorboard"):
        return local, {}
    from fsspec.core import url_to_fs

    filesystem, root = url_to_fs(join(str(settings.out_dir), "logs", settings.logger_name))
    try:
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in filesystem.ls(root, detail=False)]
    except FileNotFoundError:
        names = []
    versions = [int(name[8:]) for name in names if name.startswith("version_") and name[8:].isdigit()]
    return local, {"version": max(versions, default=-1) + 1}
