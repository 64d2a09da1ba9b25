"""The codec grammar as a transformers LogitsProcessor: exported tiny models sampled with transformers' own
generate() write JPEG and H.264 files that always decode, judged as train.generate judges its files.

The models are tiny and untrained (seeded random weights, exported by train.export from a checkpoint folder
written here): the grammar, not the model, is what makes the files valid, and an untrained model writes the
least likely streams, where the grammar works hardest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from litgpt import GPT, Config

from preprocess.run import run
from shared.codec.avc.bytestream import nal_units
from shared.format.dataset import Dataset
from train.engine import filter_logits
from train.export import export
from train.hf_grammar import CodecGrammar, HfGrammarError

transformers = pytest.importorskip("transformers")

DATASETS = {  # codec: (profile, flags)
    "jpeg": ("jpeg-64-q25", ["--seq-len", "255", "--sample-size", "12"]),
    "avc": ("avc-64x48-3fps-2s-qp37", ["--modality", "video", "--seq-len", "511", "--sample-size", "4",
                                        "--vocab-size", "300"]),
}


def tiny_export(root: Path, codec: str) -> tuple[Path, Dataset]:
    """A dataset of the codec, a seeded random tiny Llama-shaped checkpoint for it, exported for transformers."""
    profile, flags = DATASETS[codec]
    data = root / "data"
    run(["--output", str(data), "--profile", profile, "--val-fraction", "0.2", "--direct_running_mode", "in_memory",
         "--direct_num_workers", "1", *flags])
    dataset = Dataset.open(str(data))
    vocab = dataset.manifest["vocab_size"]
    config = dict(name="hf-grammar-tiny", block_size=2048, vocab_size=vocab, padded_vocab_size=vocab, n_layer=1,
                  n_head=1, n_query_groups=1, n_embd=32, intermediate_size=64, rotary_percentage=1.0,
                  parallel_residual=False, bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP")
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model_config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    torch.save(GPT(Config(**config)).state_dict(), checkpoint / "lit_model.pth")
    return export(checkpoint, root / "hf", dataset=str(data)), dataset


@pytest.fixture(scope="module", params=sorted(DATASETS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    return tiny_export(tmp_path_factory.mktemp(request.param), request.param)


def a_stream(dataset: Dataset) -> bytes:
    _, _, stream = next(dataset.document_streams(dataset.documents))
    return stream


def generated(folder: Path, prompts: list[bytes], max_new_tokens: int, seed: int = 0, generate: dict | None = None,
              **sampling: object) -> tuple[CodecGrammar, torch.Tensor, int]:
    """``generate()``'s rows (sampling, top_k=0, unless ``generate`` says otherwise), the grammar, and the
    prompts' width."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    grammar = CodecGrammar.from_pretrained(folder, **sampling)
    ids, mask = grammar.prompt_ids(prompts)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only waits for a second thread (seconds on a busy machine)
    try:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             logits_processor=transformers.LogitsProcessorList([grammar]),
                             **{"do_sample": True, "top_k": 0, **(generate or {})})
    finally:
        torch.set_num_threads(threads)
    return grammar, out, ids.shape[1]


def assert_rows_decode(grammar: CodecGrammar, out: torch.Tensor, width: int, kind: str) -> None:
    assert out.shape[1] > width  # something was sampled
    for row in out:
        generated_ids = row[width:].tolist()
        assert grammar.bos_id not in generated_ids
        assert grammar.stream(row).startswith(grammar.stream(row[:width]))
        file = grammar.file(row)
        assert file is not None and grammar.problems(file) == (), grammar.problems(file)
        assert file.startswith(b"\xff\xd8") if kind == "jpeg" else file[4:8] == b"ftyp"


def test_every_sampled_file_decodes(exported: tuple[Path, Dataset]) -> None:
    folder, dataset = exported
    prompt = dataset.profile.cut_after_units(a_stream(dataset), 1)  # one MCU (JPEG) or one frame (AVC)
    grammar, out, width = generated(folder, [b"", b"", prompt, prompt], max_new_tokens=40)  # rows of other lengths
    assert_rows_decode(grammar, out, width, dataset.profile.kind)


def test_several_samples_per_prompt_and_beam_search_decode(exported: tuple[Path, Dataset]) -> None:
    """generate() repeats each prompt's row (num_return_sequences) and reorders beams: rows are followed."""
    folder, dataset = exported
    prompt = dataset.profile.cut_after_units(a_stream(dataset), 1)
    grammar, out, width = generated(folder, [b"", prompt], max_new_tokens=16, generate={"num_return_sequences": 3})
    assert out.shape[0] == 6
    assert_rows_decode(grammar, out, width, dataset.profile.kind)
    grammar, out, width = generated(folder, [b"", prompt], max_new_tokens=16,
                                    generate={"do_sample": False, "num_beams": 3, "num_return_sequences": 2})
    assert out.shape[0] == 4
    assert_rows_decode(grammar, out, width, dataset.profile.kind)


def test_the_grammar_overrules_what_comes_before_it(exported: tuple[Path, Dataset]) -> None:
    """Allowed tokens an earlier processor set to -inf are drawn alike (never a row of -inf only), and EOS
    generated where the stream may not end is refused like any forbidden token."""
    folder, dataset = exported
    grammar = CodecGrammar.from_pretrained(folder)
    constraint = grammar.constraint
    ids, _ = grammar.prompt_ids([b""])
    allowed = torch.from_numpy(constraint.allowed(constraint.feed(constraint.start(), b"")))
    scores = torch.randn(1, grammar.vocab_size, generator=torch.Generator().manual_seed(0))
    scores[0, allowed] = float("-inf")
    got = torch.softmax(grammar(ids, scores), dim=-1)[0]
    assert torch.equal(got > 0, allowed) and torch.allclose(got[allowed], got[allowed][0])
    assert not allowed[grammar.eos_id]  # from BOS alone the stream may not end
    with pytest.raises(HfGrammarError, match=f"token {grammar.eos_id} was generated where the grammar forbids it"):
        grammar(torch.cat([ids, torch.tensor([[grammar.eos_id]])], dim=1), scores)


def test_a_stream_that_is_nearly_whole_ends_with_eos_where_it_may(exported: tuple[Path, Dataset]) -> None:
    """Prompted with all of a stream but its last unit's end, the rows must finish it and stop by EOS:
    forced once the stream is full, and the stream is then whole and clean as sampled."""
    folder, dataset = exported
    profile, stream = dataset.profile, a_stream(dataset)
    if profile.kind == "jpeg":
        prompt = profile.cut_after_units(stream, profile.total_units - 1)  # all but the last MCU
    else:
        prompt = stream[:nal_units(stream)[-2][0]]  # all but the last two slices (macroblocks) of the last frame
    grammar, out, width = generated(folder, [prompt] * 2, max_new_tokens=400, seed=1, top_k=5)
    for row in out:
        ids = row[width:].tolist()
        assert grammar.eos_id in ids, "the grammar forces EOS once the stream is full"
        assert grammar.bos_id not in ids
        decoded = profile.decode(grammar.stream(row))
        assert decoded.complete, decoded.facts
        assert grammar.problems(grammar.file(row)) == ()


def test_the_mask_is_train_generates_distribution(exported: tuple[Path, Dataset]) -> None:
    """The processor's scores, softmaxed, are the filtered distribution masked to the allowed tokens and
    renormalised; where the filters leave no allowed token, the filters among the allowed ones."""
    folder, dataset = exported
    grammar = CodecGrammar.from_pretrained(folder, top_k=8, top_p=0.9, temperature=0.7)
    constraint, vocab = grammar.constraint, grammar.vocab_size
    ids, _ = grammar.prompt_ids([dataset.profile.cut_after_units(a_stream(dataset), 1)])
    state = constraint.feed(constraint.start(), grammar.stream(ids[0]))
    allowed = torch.from_numpy(constraint.allowed(state))
    generator = torch.Generator().manual_seed(0)
    fallback_seen = False
    for trial in range(40):
        scores = torch.randn(1, vocab, generator=generator) * 3
        if trial % 4 == 0:  # the filters' favourites all forbidden: the fallback
            scores[0, ~allowed] += 100
        got = torch.softmax(grammar(ids, scores.clone()), dim=-1)[0]
        logits = scores[0].clone()
        logits[grammar.bos_id] = float("-inf")
        filtered = filter_logits(logits, 0.7, 8, 0.9)
        if (torch.isfinite(filtered) & allowed).any():
            expected = torch.softmax(filtered.masked_fill(~allowed, float("-inf")), dim=-1)
        else:
            fallback_seen = True
            among = logits.masked_fill(~allowed, float("-inf"))
            expected = torch.softmax(filter_logits(among, 0.7, 8, 0.9), dim=-1)
        assert torch.allclose(got, expected, atol=1e-6)
        assert got[~allowed].sum() == 0
    assert fallback_seen


def test_clear_errors(exported: tuple[Path, Dataset], tmp_path: Path) -> None:
    folder, dataset = exported
    with pytest.raises(HfGrammarError, match="no codec_lm.json and tokenizer.json"):
        CodecGrammar.from_pretrained(tmp_path)
    with pytest.raises(HfGrammarError, match="top_p must be in"):
        CodecGrammar.from_pretrained(folder, top_p=0)
    with pytest.raises(HfGrammarError, match="temperature must be above 0"):
        CodecGrammar.from_pretrained(folder, temperature=0)
    grammar = CodecGrammar.from_pretrained(folder)
    with pytest.raises(HfGrammarError, match="prompt 1 is not the start of a"):
        grammar.prompt_ids([b"", b"\xff\xd9\xff\xd9"])
    record = json.loads((folder / "codec_lm.json").read_text())
    assert grammar.profile.name == record["profile"]["name"]
