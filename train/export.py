"""Export a `litgpt pretrain` checkpoint as a Hugging Face Llama model folder.

    python -m train.export --checkpoint out/jpeg-tiny/final --out hf/jpeg-tiny [--dataset DIR] [--overwrite]

CHECKPOINT is a folder LitGPT or ``python -m train.pretrain`` wrote: ``lit_model.pth`` (the model state
dict, or the whole training state with the model under ``"model"``, as in ``step-*/`` and ``final/``) or
``sharded/`` (a sharded run's shards, gathered here), ``model_config.yaml`` and ``hyperparameters.yaml``.
The tokenizer and the codec profile are the ones the checkpoint carries (``dataset/``, written by
``train.pretrain``), else those of the dataset it records (``data.init_args.path``), unless ``--dataset``
names one.

The output folder loads with ``transformers`` alone (this script does not need it):

    config.json, model.safetensors       LlamaForCausalLM (weight names converted by LitGPT's own
                                         ``convert_lit_checkpoint`` helpers)
    tokenizer.json                       the dataset's byte-level BPE, byte for byte
    tokenizer_config.json, special_tokens_map.json
                                         so AutoTokenizer gives a PreTrainedTokenizerFast with BOS/EOS
    generation_config.json               sampling as the paper: top-k 50, temperature 1
    codec_lm.json                        the codec profile and how generated ids become a file
    README.md                            a short model card

It is written into a temporary folder beside OUT and renamed into place, so OUT is never half-written.
The stages (load, convert, write) are reported on stderr as they go, the conversion with a bar over the
tensors (a line every 30 seconds in a log, none with TQDM_DISABLE=1).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from litgpt import Config
from litgpt.scripts.convert_lit_checkpoint import check_conversion_supported, copy_weights_llama
from safetensors.torch import save_file

from shared.codec.registry import CODECS
from shared.errors import CodecLmError
from shared.format.files import read_bytes, size
from shared.format.tokenizer import BOS, BYTE_BASE, EOS
from shared.tools import cli
from shared.tools.progress import progress_bar
from train.checkpoint import (
    WEIGHTS,
    child,
    existing_checkpoint,
    load_lit_weights,
    load_model_config,
    open_dataset,
    place,
    weights_files,
)

PROG = "python -m train.export"
FORMAT = "codec-lm-export/1"
# Sampling as the paper's evaluation (top-k 50 at temperature 1).
TOP_K, TEMPERATURE, TOP_P = 50, 1.0, 1.0

DECODING_NOTE = (
    "Generation starts from [bos_id] alone (unconditional) or from BOS followed by the tokens of a prompt "
    "stream (a JPEG prompt cut at a restart marker tokenizes to a prefix of the full stream's tokens), and "
    "stops at eos_id. To turn the generated ids into a file: drop BOS and EOS, map each remaining id to its "
    "token text with the tokenizer (tokenizer.convert_ids_to_tokens, or tokenizer.decode with "
    "skip_special_tokens=True), and turn every character c of that text into the byte ord(c) - 0x2800 "
    "(byte b is carried as the Braille character U+2800+b; in this repository shared.format.tokenizer.text_to_bytes "
    "does it). That byte string is the codec stream with its invariant header stripped: "
    "shared.codec.registry.profile_from_json(record['profile']).restore(stream) puts the recorded header (and, "
    "for JPEG, the end marker) back and gives a standard .jpg file (or an Annex-B H.264 stream for AVC "
    "profiles). A sampled stream may be imperfect: profile.decode(stream) decodes tolerantly and reports "
    "how much of it was valid."
)


class ExportError(CodecLmError):
    """A checkpoint that cannot be exported as a Llama folder, or an OUT that may not be written."""


# ---- what Llama can hold -------------------------------------------------------------------------------
def llama_incompatibilities(config: Config) -> list[str]:
    """Why HF's LlamaForCausalLM could not compute what this LitGPT model computes (empty: it can)."""
    problems = []
    expected = {
        "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm", "parallel_residual": False,
        "shared_attention_norm": False, "bias": False, "attn_bias": False, "lm_head_bias": False,
        "rotary_percentage": 1.0, "rope_condense_ratio": 1, "rope_adjustments": None, "rope_interleave": False,
        "rope_indices": None, "n_expert": 0, "norm_qk": False, "post_attention_norm": False,
        "post_mlp_norm": False, "scale_embeddings": False, "attention_logit_softcapping": None,
        "final_logit_softcapping": None, "attention_scores_scalar": None, "sliding_window_size": None,
        "latent_attention": None, "norm_1": True, "norm_2": True,
    }
    for name, value in expected.items():
        actual = getattr(config, name, value)  # a field this LitGPT lacks cannot be set either
        if actual != value:
            problems.append(f"{name} is {actual!r}, Llama needs {value!r}")
    if "gemma" in config.name.lower():  # LitGPT's RMSNorm adds a unit offset for Gemma names
        problems.append(f"name {config.name!r} selects Gemma's RMSNorm (weight + 1)")
    return problems


def hf_state_dict(config: Config, lit_weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """LitGPT names -> HF Llama names, by LitGPT's own converter (it splits the fused QKV projection), a
    tensor at a time: a lazily loaded one is read here, so the bar over them is the loading's too."""
    check_conversion_supported(lit_weights)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in progress_bar(len(lit_weights), "converting", "tensor", iterable=lit_weights.items()):
        converted: dict[str, torch.Tensor] = {}
        try:
            copy_weights_llama(config, converted, {name: tensor})
        except KeyError as error:
            raise ExportError(f"the checkpoint has a weight Llama has no place for: {error}") from None
        # safetensors refuses tensors that share memory (the split QKV views, tied embeddings): own copies
        state |= {key: value.detach().clone().contiguous() for key, value in converted.items()}
    expected = expected_hf_names(config)
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ExportError(f"the converted weights do not make a Llama model: missing {missing[:4]}, "
                          f"unexpected {extra[:4]}")
    return state


def expected_hf_names(config: Config) -> set[str]:
    per_layer = ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                 "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    names |= {f"model.layers.{i}.{part}.weight" for i in range(config.n_layer) for part in per_layer}
    return names


# ---- what the folder holds -----------------------------------------------------------------------------
def llama_config(config: Config, manifest: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """config.json as LlamaConfig writes it (the long-standing field names; newer transformers read them too)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        # the embedding's rows; ids past the tokenizer's are never sampled in practice
        "vocab_size": config.padded_vocab_size,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": float(config.rope_base),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,  # lm_head.weight is written either way
        "bos_token_id": manifest["bos_id"],
        "eos_token_id": manifest["eos_id"],
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def tokenizer_files(manifest: dict[str, Any], block_size: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json beside the unchanged tokenizer.json.

    The tokenizer adds no BOS by itself (tokenizer.json has no post-processor, as in the dataset);
    callers put bos_token_id first, as the training documents do.
    """
    return {
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "model_max_length": block_size,
            "clean_up_tokenization_spaces": False,  # token text is Braille; never rewrite it
            "add_bos_token": False,
            "add_eos_token": False,
        },
        "special_tokens_map.json": {"bos_token": BOS, "eos_token": EOS},
    }


def generation_config(manifest: dict[str, Any], block_size: int) -> dict[str, Any]:
    return {
        "do_sample": True,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "top_p": TOP_P,
        "bos_token_id": manifest["bos_id"],
        "eos_token_id": manifest["eos_id"],
        "pad_token_id": manifest["eos_id"],  # there is no pad token; this keeps generate() from guessing
        "max_new_tokens": block_size,
    }


def codec_record(manifest: dict[str, Any], dataset_root: str, checkpoint: str | Path,
                 block_size: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "modality": manifest.get("modality"),
        "profile": manifest["profile"],
        "vocab_size": manifest["vocab_size"],
        "bos_id": manifest["bos_id"],
        "eos_id": manifest["eos_id"],
        "byte_base": BYTE_BASE,
        "block_size": block_size,
        "dataset_seq_len": manifest["seq_len"],
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "dataset": dataset_root,
        "checkpoint": str(checkpoint),
        "decoding": DECODING_NOTE,
    }


def model_card(config: Config, manifest: dict[str, Any], parameters: int, dtype: torch.dtype) -> str:
    profile = manifest["profile"]["name"]
    codec = CODECS[manifest["profile"]["kind"]]
    kind = f"{codec.modality}s as {codec.kind.upper()} files ({codec.file_suffix})"
    return f"""# {config.name}

A Llama-architecture language model that generates {kind} bytes (codec-LM, after Jpeg-LM / Avc-LM,
Han et al.), exported from a `litgpt pretrain` checkpoint by `python -m train.export`.

- {parameters:,} parameters ({dtype}), {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads,
  context {config.block_size} tokens
- codec profile `{profile}`; byte-level BPE of {manifest['vocab_size']} ids (BOS {manifest['bos_id']},
  EOS {manifest['eos_id']}), byte b carried as the character U+2800+b

```python
from transformers import AutoTokenizer, LlamaForCausalLM
import torch, json
model, tokenizer = LlamaForCausalLM.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR)
ids = model.generate(torch.tensor([[tokenizer.bos_token_id]]))[0].tolist()  # top-k 50, temperature 1
text = tokenizer.decode(ids, skip_special_tokens=True)
stream = bytes(ord(c) - 0x2800 for c in text)

from shared.codec.registry import profile_from_json  # codec-lm
profile = profile_from_json(json.load(open(f"{{DIR}}/codec_lm.json"))["profile"])
open("out" + profile.file_suffix, "wb").write(profile.restore(stream))
```

`codec_lm.json` records the profile (with its invariant header) and how generated ids become a file.
"""


# ---- the export ------------------------------------------------------------------------------------------
def export(checkpoint: str | Path, out: Path, dataset: str | None = None, overwrite: bool = False) -> Path:
    """Write the HF folder for ``checkpoint`` (local, gs://, s3://) at ``out`` (local); returns ``out``."""
    checkpoint, out = place(checkpoint), Path(out)
    files = weights_files(checkpoint)
    if not files:
        raise ExportError(f"no checkpoint at {checkpoint}: expected {child(checkpoint, WEIGHTS)} or sharded/ "
                          "(a folder `litgpt pretrain` wrote, e.g. out/jpeg-tiny/final)")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")

    config = load_model_config(checkpoint)
    problems = llama_incompatibilities(config)
    if problems:
        raise ExportError(f"{checkpoint} is not a Llama-shaped model, so it cannot be a LlamaForCausalLM: "
                          + "; ".join(problems))

    data = open_dataset(checkpoint, dataset)
    manifest = data.manifest
    if config.vocab_size != manifest["vocab_size"] or config.padded_vocab_size < manifest["vocab_size"]:
        raise ExportError(f"vocabulary mismatch: the model has vocab_size {config.vocab_size} (padded "
                          f"{config.padded_vocab_size}), the dataset {data.root} has {manifest['vocab_size']} ids; "
                          "is this the dataset the model was trained on? (--dataset)")
    tokenizer_json = read_bytes(data.path(manifest["tokenizer"]["path"]))
    tokenizer = data.tokenizer
    if (tokenizer.bos_id, tokenizer.eos_id) != (manifest["bos_id"], manifest["eos_id"]):
        raise ExportError(f"{data.root}: the tokenizer's BOS/EOS ids ({tokenizer.bos_id}, {tokenizer.eos_id}) "
                          f"differ from the manifest's ({manifest['bos_id']}, {manifest['eos_id']})")

    stage(f"loading the weights of {checkpoint} ({len(files)} file{'s' * (len(files) > 1)}, "
          f"{gigabytes(sum(size(str(f)) for f in files))})")
    weights = hf_state_dict(config, load_lit_weights(checkpoint))
    dtype = weights["model.embed_tokens.weight"].dtype
    parameters = sum(t.numel() for t in weights.values())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # same filesystem: rename is atomic
    try:
        stage(f"writing model.safetensors ({parameters:,} parameters, {dtype}, "
              f"{gigabytes(sum(t.numel() * t.element_size() for t in weights.values()))}) and the tokenizer files")
        save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})  # transformers checks "format"
        write_json(staging / "config.json", llama_config(config, manifest, dtype))
        (staging / "tokenizer.json").write_bytes(tokenizer_json)
        for name, value in tokenizer_files(manifest, config.block_size).items():
            write_json(staging / name, value)
        write_json(staging / "generation_config.json", generation_config(manifest, config.block_size))
        write_json(staging / "codec_lm.json", codec_record(manifest, data.root, checkpoint, config.block_size))
        (staging / "README.md").write_text(model_card(config, manifest, parameters, dtype))
        publishable(staging)
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def replace_folder(staging: Path, out: Path) -> None:
    """Move the finished folder into place; an old one is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old)


def publishable(folder: Path) -> None:
    """The modes a plain mkdir / open would give: mkdtemp (and safetensors) create owner-only files."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def stage(message: str) -> None:
    """Where the export is, on stderr: loading and writing a 7B model take minutes."""
    print(message, file=sys.stderr, flush=True)


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("--checkpoint", required=True, type=place,
                        help="a litgpt pretrain checkpoint folder (local, gs://, s3://)")
    parser.add_argument("--out", required=True, type=Path, help="the Hugging Face model folder to write")
    parser.add_argument("--dataset", help="the training dataset (default: the one hyperparameters.yaml records)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    # paths before any work, a missing one named as missing first
    existing_checkpoint(args.checkpoint)
    if args.dataset is not None:
        cli.existing_dir(args.dataset, "--dataset")
    if args.out.exists() and not args.overwrite:
        raise cli.UsageError(f"--out {args.out}: already exists; pass --overwrite to replace it")
    cli.writable(args.out, "--out", folder=False)  # OUT is made beside itself and renamed into place
    out = export(args.checkpoint, args.out, args.dataset, args.overwrite)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
