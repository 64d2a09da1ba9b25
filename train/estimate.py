"""What a config costs: parameters, tokens per optimizer step, memory per GPU, tokens/s per GPU, with and
without activation checkpointing, and which GPUs it fits.

    python -m train.estimate --config train/jpeg7b.yaml [--activation-checkpointing full] [--gpus-per-node 8]
        [--strategy fsdp2|fsdp1] [--hfu 0.4] [--json]

``--activation-checkpointing`` takes what ``python -m train.pretrain --activation_checkpointing`` takes (LitGPT
spells its flags in snake_case); the old spelling ``--activation_checkpointing`` here still works, with a warning.

Memory follows the config's ``precision``: ``bf16-true`` keeps weights, gradients and both AdamW moments in
bf16 (8 bytes per parameter), ``bf16-mixed`` / ``32-true`` in fp32 (16 bytes), sharded across the GPUs of
one node (FSDP2 in ``python -m train.pretrain``, HSDP across nodes; FSDP1 ``HYBRID_SHARD`` in ``litgpt
pretrain``). Beside the shards, each GPU holds two blocks' gathered weights (the one computing and the one
prefetched) and, with ``--strategy fsdp2``, one block's unsharded gradients in fp32 while they are reduced
(``train.parallel`` reduces in fp32, as torchtitan does; FSDP1 reduces in bf16). What
each layer keeps for its backward pass is *measured*, not guessed: one and two full-width layers run
forward in bf16 on a short sequence, every tensor autograd saves (``saved_tensors_hooks``) and every
input a checkpointed block holds for its recomputation is counted once by storage, and the difference
per token (parameters excluded) scales to the context. Without checkpointing a layer keeps all its
activations; a checkpointed layer keeps only its input, and one layer's full activations are alive
again while its backward recomputes them. These are eager-mode figures (LitGPT's RMSNorm keeps fp32
copies); ``torch.compile``, which litgpt pretrain applies, may fuse some of it away.

Speed: model FLOPs per token are 6 x parameters plus causal attention (6 x layers x width x context);
checkpointing adds the checkpointed layers' forward pass again (recompute). Tokens/s assume the GPU
runs at ``--hfu`` of its dense bf16 peak in hardware FLOPs (recompute included), so the MFU printed
beside them (useful FLOPs only) drops by the recompute share. A GPU fits a config when the estimate
stays under 90% of its memory (room for the CUDA context, NCCL buffers and fragmentation).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from litgpt import GPT, Config
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from shared.tools import cli
from train.engine import MEMORY_SHARE, kv_bytes_per_slot, slots_fitting
from train.parallel import CHOICES, blocks_to_checkpoint
from train.parallel import apply_ac as checkpoint_blocks

PROG = "python -m train.estimate"


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float  # what torch can allocate, in 1e9 bytes
    bf16_tflops: float  # dense bf16 peak (sparse figures are twice this)
    memory_tbps: float = 0.0  # HBM bandwidth, 1e12 bytes/s (sampling's decoding steps are bound by it)


GPUS = {gpu.name: gpu for gpu in (
    Gpu("A100-40GB", 42.4, 312.0, 1.555),  # 39.5 GiB usable
    Gpu("A100-80GB", 85.0, 312.0, 2.039),  # 79.2 GiB; SXM
    Gpu("H100-80GB", 85.0, 989.0, 3.35),  # SXM; 79.2 GiB
    Gpu("H200-141GB", 150.0, 989.0, 4.8),  # 139.7 GiB
)}
MEMORY_MARGIN = 0.9  # plan to use at most this share of a GPU's memory


@dataclass(frozen=True)
class LayerMemory:
    """Measured bytes kept per layer and token for the backward pass (bf16)."""

    plain: float  # a layer that keeps its activations
    checkpointed: float  # a checkpointed layer: its input only

    @property
    def factor(self) -> float:
        return self.plain / self.checkpointed


@dataclass(frozen=True)
class Estimate:
    activation_checkpointing: str
    checkpointed_layers: int
    parameters: int
    tokens_per_step: int
    sharded_state_gb: float  # weights + grads + AdamW moments, per GPU
    activations_gb: float  # per GPU, micro-batch of micro_batch_size sequences
    total_gb: float
    model_flops_per_token: float  # the useful work: forward + backward
    hardware_flops_per_token: float  # plus the recomputed forward of checkpointed layers

    def fits(self, gpu: Gpu) -> bool:
        return self.total_gb <= MEMORY_MARGIN * gpu.memory_gb

    def tokens_per_second(self, gpu: Gpu, hfu: float) -> float:
        return hfu * gpu.bf16_tflops * 1e12 / self.hardware_flops_per_token

    def mfu(self, hfu: float) -> float:
        return hfu * self.model_flops_per_token / self.hardware_flops_per_token


def count_parameters(config: Config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())


def saved_bytes(config: Config, layers: int, tokens: int, activation_checkpointing: str) -> int:
    """Bytes a ``layers``-layer model keeps for its backward pass after a bf16 forward of ``tokens``."""
    torch.manual_seed(0)
    model = GPT(replace(config, n_layer=layers, block_size=tokens)).to(torch.bfloat16)
    checkpointed = blocks_to_checkpoint(activation_checkpointing)
    if checkpointed is not None:
        checkpoint_blocks(model, checkpointed)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def count(tensor: object) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in parameters:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        count(tensor)
        return tensor

    def count_inputs(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):  # what a checkpointed block keeps to run its forward again
            count(value)

    hooks = [module.register_forward_pre_hook(count_inputs, with_kwargs=True)
             for module in model.modules() if isinstance(module, CheckpointWrapper)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.zeros(1, tokens, dtype=torch.long))
    for hook in hooks:
        hook.remove()
    return sum(storages.values())


def layer_memory(config: Config, tokens: int = 64) -> LayerMemory:
    """Per layer and token: two layers minus one, so embeddings, the head and shared tensors cancel."""
    def per_layer(choice: str) -> float:
        return (saved_bytes(config, 2, tokens, choice) - saved_bytes(config, 1, tokens, choice)) / tokens

    return LayerMemory(plain=per_layer("none"), checkpointed=per_layer("full"))


def flops_per_token(config: Config, checkpointed_layers: int = 0) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) per trained token: forward + backward, causal attention included;
    hardware FLOPs add the forward pass of the checkpointed layers again."""
    with torch.device("meta"):
        block = GPT(replace(config, n_layer=1, block_size=8)).transformer.h
    block_parameters = sum(p.numel() for p in block.parameters())
    attention = 2 * config.n_embd * config.block_size  # causal attention's forward FLOPs per layer and token
    model = 6 * count_parameters(config) + 3 * config.n_layer * attention
    return model, model + checkpointed_layers * (2 * block_parameters + attention)


def peak_bytes_per_token(is_checkpointed: list[bool], layers: LayerMemory) -> float:
    """The most activation bytes per token alive at once. The backward pass walks the blocks from the top
    and frees each block's activations before the next: when it reaches block i, blocks below still hold
    what they kept, and a checkpointed block i has its whole activations alive again beside its input."""
    kept = [layers.checkpointed if checkpointed else layers.plain for checkpointed in is_checkpointed]
    below = [sum(kept[:i]) for i in range(len(kept))]
    recomputing = [below[i] + kept[i] + layers.plain for i, checkpointed in enumerate(is_checkpointed) if checkpointed]
    return max([sum(kept), *recomputing])


STATE_BYTES = {"bf16-true": 8, "bf16-mixed": 16, "32-true": 16}  # weights, gradients, 2 AdamW moments
STRATEGIES = ("fsdp2", "fsdp1")


def estimate(config: Config, *, micro_batch: int, global_batch: int, gpus_per_node: int,
             activation_checkpointing: str = "none", layers: LayerMemory | None = None, strategy: str = "fsdp2",
             precision: str = "bf16-true") -> Estimate:
    layers = layers or layer_memory(config)
    checkpointed = blocks_to_checkpoint(activation_checkpointing)
    with torch.device("meta"):
        blocks = GPT(replace(config, n_layer=config.n_layer, block_size=8)).transformer.h
    is_checkpointed = [bool(checkpointed and checkpointed(block)) for block in blocks]
    chosen = sum(is_checkpointed)
    parameters = count_parameters(config)
    tokens = config.block_size * micro_batch
    if strategy not in STRATEGIES or precision not in STATE_BYTES:
        raise ValueError(f"strategy must be one of {STRATEGIES} and precision one of {tuple(STATE_BYTES)}")
    state = STATE_BYTES[precision] * parameters / gpus_per_node / 1e9
    activations = tokens * peak_bytes_per_token(is_checkpointed, layers) / 1e9
    logits = tokens * config.padded_vocab_size * 4 * 2 / 1e9  # fp32 logits and their gradient
    gathered = 2 if precision != "32-true" else 4  # FSDP2's mixed precision gathers bf16 copies of fp32 weights
    block = 2 * gathered * parameters / config.n_layer / 1e9  # two gathered blocks (FSDP prefetch)
    if strategy == "fsdp2":
        block += 4 * parameters / config.n_layer / 1e9  # one block's gradients, reduced in fp32
    model_flops, hardware_flops = flops_per_token(config, chosen)
    return Estimate(activation_checkpointing or "none", chosen, parameters, config.block_size * global_batch, state,
                    activations, state + activations + logits + block, model_flops, hardware_flops)


def largest_micro_batch(config: Config, *, gpu: Gpu, gpus_per_node: int, activation_checkpointing: str,
                        layers: LayerMemory, **settings: str) -> int:
    """The most sequences per micro-batch that fit ``gpu`` (0: not even one): memory grows linearly with it."""
    one, two = (estimate(config, micro_batch=m, global_batch=m, gpus_per_node=gpus_per_node,
                         activation_checkpointing=activation_checkpointing, layers=layers, **settings).total_gb
                for m in (1, 2))
    return max(0, math.floor((MEMORY_MARGIN * gpu.memory_gb - (2 * one - two)) / (two - one)))


def gpu_table(config: Config, *, gpus_per_node: int, hfu: float, layers: LayerMemory,
              choices: tuple[str, ...] = ("none", "full"), **settings: str) -> list[dict]:
    rows = []
    for choice in choices:
        one = estimate(config, micro_batch=1, global_batch=1, gpus_per_node=gpus_per_node,
                       activation_checkpointing=choice, layers=layers, **settings)
        for gpu in GPUS.values():
            rows.append({"gpu": gpu.name, "activation_checkpointing": choice, "memory_gb": round(one.total_gb, 1),
                         "fits": one.fits(gpu),
                         "largest_micro_batch": largest_micro_batch(config, gpu=gpu, gpus_per_node=gpus_per_node,
                                                                    activation_checkpointing=choice, layers=layers,
                                                                    **settings),
                         "tokens_per_second": round(one.tokens_per_second(gpu, hfu)), "mfu": round(one.mfu(hfu), 3)})
    return rows


# ---- sampling: slots and the paper's FID protocol -----------------------------------------------
BANDWIDTH_SHARE = 0.7  # of HBM bandwidth a decoding step reaches (weights and KV cache read once a step)
PROMPT_RATIOS = (0.25, 0.5, 0.75)  # the paper's Table 3
FID_SEEDS = 3  # "Experiments were done three times with different seeds"
# completions per prompt ratio and seed: ImageNet-1K val (Table 3), FFHQ (Table 3), FFHQ downsized (Table 4)
FID_IMAGES = {"ImageNet-1K val": 5000, "FFHQ": 1000, "FFHQ 0.5x": 1000}
FID_UNCONDITIONAL = 5000  # per seed; the paper does not say how many: as many as ImageNet's set


def sampling_slots(config: Config, gpu: Gpu, length: int, parameters: int | None = None) -> int:
    """KV-cache slots ``python -m train.generate --max-batch auto`` takes on ``gpu`` for rows of ``length``
    positions, bf16 weights and cache: what the engine's budget of the memory left beside the weights holds
    (``train.engine.slots_fitting``, as ``plan_slots``)."""
    free = int(gpu.memory_gb * 1e9) - 2 * (parameters or count_parameters(config))
    return slots_fitting(config, length, torch.bfloat16, free)


def decode_step_seconds(config: Config, gpu: Gpu, slots: int, context: float, hfu: float, parameters: int) -> float:
    """One decoding step of ``slots`` rows at ``context`` positions on average: the longer of reading the bf16
    weights and the rows' KV caches at BANDWIDTH_SHARE of the bandwidth, and the step's FLOPs at ``hfu``."""
    read = 2 * parameters + slots * kv_bytes_per_slot(config, 1, torch.bfloat16) * context
    flops = slots * (2 * parameters + 4 * config.n_layer * config.n_embd * context)
    return max(read / (BANDWIDTH_SHARE * gpu.memory_tbps * 1e12), flops / (hfu * gpu.bf16_tflops * 1e12))


def prefill_seconds(config: Config, gpu: Gpu, tokens: float, hfu: float, parameters: int) -> float:
    """A prompt of ``tokens`` in one forward pass: compute-bound, causal attention over half the prompt on average."""
    flops = tokens * (2 * parameters + 2 * config.n_layer * config.n_embd * tokens)
    return flops / (hfu * gpu.bf16_tflops * 1e12)


def fid_protocol_hours(config: Config, gpu: Gpu, *, document_tokens: int, hfu: float,
                       length: int | None = None, parameters: int | None = None) -> dict[str, float]:
    """GPU-hours of the paper's FID protocol on ``gpu``: every image set at every prompt ratio and the
    unconditional samples, FID_SEEDS seeds each. A completion of prompt ratio r prefills r x document_tokens
    and generates the rest, one token per step in a slot (continuous batching keeps the slots full: utilization
    1); its steps run at the average context of its generation. Slots come from the cache length the jobs
    need, ``length`` (default: the whole context, which is what rows without --max-new-tokens reserve)."""
    parameters = parameters or count_parameters(config)
    slots = sampling_slots(config, gpu, length or config.block_size, parameters)
    if slots < 1:
        return {"slots": 0, "completions": 0, "generated_tokens": 0.0, "gpu_hours": math.inf}
    settings = [(ratio, count) for count in FID_IMAGES.values() for ratio in PROMPT_RATIOS]
    settings.append((0.0, FID_UNCONDITIONAL))
    seconds = tokens = completions = 0.0
    for ratio, count in settings:
        prompt, generated = ratio * document_tokens, (1 - ratio) * document_tokens
        step = decode_step_seconds(config, gpu, slots, prompt + generated / 2, hfu, parameters)
        each = generated * step / slots + prefill_seconds(config, gpu, prompt, hfu, parameters)
        seconds += FID_SEEDS * count * each
        tokens += FID_SEEDS * count * generated
        completions += FID_SEEDS * count
    return {"slots": slots, "completions": completions, "generated_tokens": tokens, "gpu_hours": seconds / 3600}


def sampling_table(config: Config, *, document_tokens: int, hfu: float) -> list[dict]:
    rows = []
    packed = min(config.block_size, int(1.2 * document_tokens))  # a cache sized to the rows' real length
    parameters = count_parameters(config)
    for gpu in GPUS.values():
        dense = fid_protocol_hours(config, gpu, document_tokens=document_tokens, hfu=hfu, parameters=parameters)
        step = decode_step_seconds(config, gpu, max(1, dense["slots"]), document_tokens / 2, hfu, parameters)
        rows.append({"gpu": gpu.name, "slots_at_context": dense["slots"],
                     "slots_at_real_length": sampling_slots(config, gpu, packed, parameters), "real_length": packed,
                     "tokens_per_second": round(dense["slots"] / step) if dense["slots"] else 0,
                     "fid_completions": dense["completions"], "fid_generated_tokens": dense["generated_tokens"],
                     "fid_gpu_hours": dense["gpu_hours"],
                     "fid_gpu_hours_at_real_length": fid_protocol_hours(
                         config, gpu, document_tokens=document_tokens, hfu=hfu, length=packed,
                         parameters=parameters)["gpu_hours"]})
    return rows


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("--config", type=Path, required=True, help="a litgpt pretrain YAML (train/jpeg7b.yaml …)")
    parser.add_argument("--activation-checkpointing", default="none", help=f"{CHOICES} (default: none)")
    cli.deprecated(parser, "--activation_checkpointing", "--activation-checkpointing")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="FSDP shards the state across these")
    parser.add_argument("--hfu", type=float, default=0.4,
                        help="share of the GPU's dense bf16 peak the step runs at, recompute included (default 0.4)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="fsdp2",
                        help="fsdp2: python -m train.pretrain (default); fsdp1: litgpt pretrain")
    parser.add_argument("--document-tokens", type=int,
                        help="tokens of one document, for sampling (default: 5,000, a 256x256 JPEG, for a context "
                             "up to 16K; 15,000, the paper's average clip, above)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    args = parser.parse_args(argv)
    cli.existing(args.config, "--config", "file")
    try:
        blocks_to_checkpoint(args.activation_checkpointing, flag="--activation-checkpointing")
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    if args.document_tokens is not None and args.document_tokens < 1:
        raise cli.UsageError(f"--document-tokens must be positive, not {args.document_tokens}")
    if args.gpus_per_node < 1 or not 0 < args.hfu <= 1:
        raise cli.UsageError(f"--gpus-per-node must be 1 or more (not {args.gpus_per_node}) and --hfu in (0, 1] "
                             f"(not {args.hfu})")
    try:
        settings = yaml.safe_load(args.config.read_text())
    except yaml.YAMLError as error:
        raise cli.UsageError(f"--config {args.config}: not YAML ({' '.join(str(error).split())})") from None
    if not isinstance(settings, dict) or not all(isinstance(settings.get(k), dict) for k in ("model_config", "train")):
        raise cli.UsageError(f"--config {args.config}: no model_config and train sections: pass a litgpt pretrain "
                             "config (train/jpeg7b.yaml …)")
    config = Config(**settings["model_config"])
    train = settings["train"]
    layers = layer_memory(config)
    precision = settings.get("precision") or "bf16-true"
    if precision not in STATE_BYTES:
        raise cli.UsageError(f"--config {args.config}: precision {precision!r} is not one of {', '.join(STATE_BYTES)}")
    result = estimate(config, micro_batch=train["micro_batch_size"], global_batch=train["global_batch_size"],
                      gpus_per_node=args.gpus_per_node, activation_checkpointing=args.activation_checkpointing,
                      layers=layers, strategy=args.strategy, precision=precision)
    choices = tuple(dict.fromkeys(("none", "full", args.activation_checkpointing)))
    table = gpu_table(config, gpus_per_node=args.gpus_per_node, hfu=args.hfu, layers=layers, choices=choices,
                      strategy=args.strategy, precision=precision)
    document_tokens = args.document_tokens or (5000 if config.block_size <= 16384 else 15000)
    sampling = sampling_table(config, document_tokens=document_tokens, hfu=args.hfu)
    if args.json:
        print(json.dumps({"config": str(args.config), "strategy": args.strategy, "precision": precision,
                          "estimate": asdict(result), "layer_memory": asdict(layers),
                          "gpus": table, "sampling": sampling}, indent=2))
        return 0
    print(f"{config.name}: {result.parameters:,} parameters, {result.tokens_per_step:,} tokens per optimizer step, "
          f"context {config.block_size:,}")
    print(f"  kept per layer and token (bf16, measured): {layers.plain / 1e3:,.1f} KB, checkpointed "
          f"{layers.checkpointed / 1e3:,.1f} KB ({layers.factor:.1f}x less)")
    sharding = "FSDP2, HSDP across nodes" if args.strategy == "fsdp2" else "FSDP1 HYBRID_SHARD"
    print(f"  per GPU ({args.gpus_per_node} per node, {sharding}, {precision}, "
          f"micro-batch {train['micro_batch_size']}, "
          f"checkpointing {result.activation_checkpointing}: {result.checkpointed_layers} of {config.n_layer} blocks): "
          f"sharded state {result.sharded_state_gb:.1f} GB + activations {result.activations_gb:.1f} GB = "
          f"{result.total_gb:.1f} GB")
    print(f"  {result.model_flops_per_token / 1e9:.1f} GFLOP per token, {result.hardware_flops_per_token / 1e9:.1f} "
          f"with recompute (+{result.hardware_flops_per_token / result.model_flops_per_token - 1:.0%})")
    print(f"\n  {'GPU':11s} {'checkpointing':13s} {'GB/GPU':>7s}  {'fits':4s} {'max micro-batch':>15s} "
          f"{'tokens/s/GPU':>12s} {'MFU':>5s}   (at {args.hfu:.0%} HFU; fits = under {MEMORY_MARGIN:.0%} of memory)")
    for row in table:
        print(f"  {row['gpu']:11s} {row['activation_checkpointing']:13s} {row['memory_gb']:7.1f}  "
              f"{'yes' if row['fits'] else 'no':4s} {row['largest_micro_batch']:15d} {row['tokens_per_second']:12,d} "
              f"{row['mfu']:5.0%}")
    print_sampling(config, sampling, document_tokens=document_tokens, hfu=args.hfu)
    return 0


def print_sampling(config: Config, rows: list[dict], *, document_tokens: int, hfu: float) -> None:
    per_token = kv_bytes_per_slot(config, 1, torch.bfloat16)
    print(f"\n  sampling (bf16 weights and KV cache, {per_token / 2**20:.2f} MiB of cache per token and row: "
          f"{per_token * config.block_size / 1e9:.1f} GB a row at the {config.block_size:,}-token context)")
    real = f"at {rows[0]['real_length']:,}"
    print(f"  {'GPU':11s} {'slots':>5s} {real:>9s} {'tokens/s':>9s} {'FID protocol GPU-h':>18s} "
          f"{'at real length':>14s}")
    for row in rows:
        print(f"  {row['gpu']:11s} {row['slots_at_context']:5d} {row['slots_at_real_length']:9d} "
              f"{row['tokens_per_second']:9,d} {row['fid_gpu_hours']:18,.0f} "
              f"{row['fid_gpu_hours_at_real_length']:14,.0f}")
    images = " + ".join(f"{count:,} {name}" for name, count in FID_IMAGES.items())
    print(f"  FID protocol: ({images}) images x {len(PROMPT_RATIOS)} prompt ratios {PROMPT_RATIOS} + "
          f"{FID_UNCONDITIONAL:,} unconditional, x {FID_SEEDS} seeds = {rows[0]['fid_completions']:,.0f} completions,"
          f" {rows[0]['fid_generated_tokens'] / 1e6:,.0f}M generated tokens of {document_tokens:,}-token documents.")
    print(f"  Assumed, not measured (no GPU): slots = {MEMORY_SHARE:.0%} of memory beside the weights over one row's "
          f"cache; a decoding step reads the weights and every row's cache at {BANDWIDTH_SHARE:.0%} of HBM bandwidth "
          f"or computes at {hfu:.0%} of bf16 peak, whichever is longer, at the average context of the generation; "
          "prompts prefill compute-bound; continuous batching keeps every slot busy; the grammar's CPU time is not "
          "counted (bench.generate measures its share per token). 'at real length': a cache that holds each row's "
          "real length (1.2 x the document), as a paged layout would; LitGPT's is dense, sized to the context.")


if __name__ == "__main__":
    sys.exit(main())
