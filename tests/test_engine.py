"""The sampling engine on tiny random models: continuous batching gives every row the sample it gets alone,
slots are sized by memory, and bad jobs or slot settings are refused before any sampling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from litgpt import GPT, Config

from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.token_constraint import TokenConstraint
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crops
from train import engine as engine_module
from train.engine import (
    MEMORY_SHARE,
    Engine,
    EngineError,
    Job,
    SamplingProgress,
    SamplingSettings,
    cgroup_room,
    kv_bytes_per_slot,
    plan_slots,
    sample_all,
)
from train.generate import GenerateSettings, prompt_jobs


def tiny(kind: str) -> tuple[GPT, ByteTokenizer, TokenConstraint, list[bytes]]:
    """A random 2-layer model (multi-query attention) over a tokenizer trained on a few streams, the profile's
    grammar, and prompts of different lengths (none, a few units, more). EOS gets a random output row, so free
    rows stop at different lengths."""
    if kind == "jpeg":
        profile = JpegProfile.from_name("jpeg-64-q25")
        streams = [profile.encode(png) for _, png in sample_crops(3, seed=3)]
        prompts = [profile.prompt(streams[0], 0.75), b"", profile.prompt(streams[1], 0.25), b""]
    else:
        profile = AvcProfile.from_name("avc-64x48-3fps-2s-qp43")
        streams = [profile.encode(sample_clip(index)[1]) for index in (1, 2)]
        prompts = [profile.cut_after_units(streams[0], 1), b"", profile.cut_after_units(streams[1], 2), b""]
    tokenizer = ByteTokenizer.train(streams, 300, boundary=profile.token_boundary)
    torch.manual_seed(0)
    config = Config(name="tiny", block_size=512, vocab_size=tokenizer.vocab_size, padded_vocab_size=304, n_layer=2,
                    n_head=2, n_query_groups=1, n_embd=32, intermediate_size=64, rotary_percentage=1.0,
                    parallel_residual=False, bias=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP")
    model = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_id] = 0.15 * torch.randn(32, generator=torch.Generator().manual_seed(0))
        model.transformer.ln_f.weight.mul_(4.0)
    constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
    return model, tokenizer, constraint, prompts


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is ~10x faster than two on a busy 2-core machine (no spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["jpeg", "avc"])
def setup(request: pytest.FixtureRequest) -> tuple[GPT, ByteTokenizer, TokenConstraint, list[bytes]]:
    return tiny(request.param)


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "constrained"])
def test_every_row_samples_the_same_in_any_batching(setup, constrained: bool) -> None:
    model, tokenizer, constraint, prompts = setup
    rule = constraint if constrained else None
    settings = SamplingSettings(max_new_tokens=16 if constrained else 40)  # a random model: the grammar redraws a lot
    jobs = [Job(prompt, 11 + index) for index, prompt in enumerate(prompts + prompts[:2])]  # more jobs than slots
    alone = sample_all(model, tokenizer, jobs, settings=settings, constraint=rule, max_batch=1)  # one at a time
    assert len({s.tokens for s in alone}) > 1 or constrained  # free rows stop at different lengths
    assert all(s.stream.startswith(job.prompt) for s, job in zip(alone, jobs))
    for slots, static in ((3, False), (3, True)):
        engine = Engine(model, tokenizer, jobs, settings=settings, constraint=rule, max_batch=slots, static=static)
        done = dict(engine.run())
        assert [done[i].stream for i in range(len(jobs))] == [s.stream for s in alone], (slots, static)
        assert [(done[i].tokens, done[i].stopped) for i in range(len(jobs))] == [(s.tokens, s.stopped) for s in alone]
        assert engine.stats.tokens == sum(s.tokens for s in alone)
        if slots < len(jobs) and not static:  # a freed slot takes the next job at once
            assert engine.stats.utilization == 1.0 and engine.stats.waiting_steps > 0
    if constrained:  # every stream stays a valid prefix of the grammar
        for sample in alone:
            constraint.feed(constraint.start(), sample.stream)


def test_continuous_batching_wastes_fewer_slot_steps_than_static_batches() -> None:
    model, tokenizer, _, _ = tiny("jpeg")
    with torch.no_grad():  # EOS more often: rows of very different lengths
        model.lm_head.weight[tokenizer.eos_id] *= 1.5
    settings = SamplingSettings(max_new_tokens=60)
    jobs = [Job(b"", seed) for seed in range(12)]
    static = Engine(model, tokenizer, jobs, settings=settings, max_batch=4, static=True)
    flowing = Engine(model, tokenizer, jobs, settings=settings, max_batch=4)
    tokens = [s.tokens for _, s in sorted(static.run())]
    assert [s.tokens for _, s in sorted(flowing.run())] == tokens and len(set(tokens)) > 2
    # static: each batch of 4 runs as long as its longest row
    assert static.stats.steps == sum(max(tokens[start:start + 4]) for start in range(0, 12, 4))
    assert flowing.stats.steps < static.stats.steps
    assert flowing.stats.overall_utilization > static.stats.overall_utilization
    assert static.stats.overall_utilization == sum(tokens) / (4 * static.stats.steps)


def test_progress_counts_every_token_and_sample(capsys: pytest.CaptureFixture[str]) -> None:
    model, tokenizer, _, _ = tiny("jpeg")
    jobs = [Job(b"", seed) for seed in range(5)]
    settings = SamplingSettings(max_new_tokens=30)
    with SamplingProgress(5 * 30, 5) as progress:
        samples = [s for _, s in Engine(model, tokenizer, jobs, settings=settings, max_batch=2).run(progress)]
        assert progress.bar.n == sum(s.tokens for s in samples) == progress.bar.total and progress.done == 5
    assert sum(s.seconds for s in samples) > 0
    assert model.max_seq_length == 512  # the model's own context, back after the run


def test_slots_by_memory() -> None:
    model, tokenizer, _, _ = tiny("jpeg")
    config = model.config
    per_slot = kv_bytes_per_slot(config, 100, torch.float32)
    assert per_slot == 2 * 2 * 1 * 16 * 100 * 4  # keys and values, 2 layers, 1 query group of 16, fp32
    room = int((7 * per_slot + 100 * 100) / MEMORY_SHARE) + 1  # seven slots beside the 100 x 100 mask
    assert plan_slots(config, 100, 50, "auto", dtype=torch.float32, device=torch.device("cpu"), memory=room) == 7
    assert plan_slots(config, 100, 3, "auto", dtype=torch.float32, device=torch.device("cpu"), memory=room) == 3
    assert plan_slots(config, 100, 50, 5, dtype=torch.float32, device=torch.device("cpu")) == 5
    # auto on this machine: what its free RAM holds, at least one
    engine = Engine(model, tokenizer, [Job(b"", 1)] * 3, settings=SamplingSettings(max_new_tokens=8))
    assert engine.slots == 3 and engine.length == 9


def test_an_explicit_slot_count_must_fit_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer, _, _ = tiny("jpeg")
    settings, jobs = SamplingSettings(max_new_tokens=8), [Job(b"", seed) for seed in range(3)]
    room = int((2 * kv_bytes_per_slot(model.config, 9, torch.float32) + 9 * 9) / MEMORY_SHARE) + 1  # two rows
    assert Engine(model, tokenizer, jobs, settings=settings, max_batch=2, memory=room).slots == 2
    with pytest.raises(EngineError, match=r"^--max-batch 3: 3 rows at 9 tokens need 0\.00 GiB of KV cache, .* "
                                          r"give --max-batch 2 or fewer, or lower --max-new-tokens$"):
        Engine(model, tokenizer, jobs, settings=settings, max_batch=3, memory=room)
    # a machine that does not say its free memory: an explicit count is taken as given, auto is refused
    monkeypatch.setattr(engine_module, "free_memory", lambda device: None)
    assert Engine(model, tokenizer, jobs, settings=settings, max_batch=3).slots == 3
    with pytest.raises(EngineError, match=r"^cannot tell this machine's free memory .*: give --max-batch N$"):
        Engine(model, tokenizer, jobs, settings=settings)


def test_a_cgroup_limit_caps_the_free_memory(tmp_path: Path) -> None:
    assert cgroup_room(tmp_path) is None  # no memory controller
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert cgroup_room(tmp_path) is None  # no limit
    (tmp_path / "memory.max").write_text("1000000\n")
    assert cgroup_room(tmp_path) == 600000
    (tmp_path / "memory.stat").write_text("anon 300000\ninactive_file 100000\n")
    assert cgroup_room(tmp_path) == 700000  # reclaimable page cache counts as free


@pytest.mark.parametrize(("setting", "message"), [
    (dict(temperature=0.0), "--temperature must be above 0, not 0.0"),
    (dict(temperature=-0.5), "--temperature must be above 0, not -0.5"),
    (dict(top_k=-1), "--top-k must be 0 or more (0 or None: no top-k), not -1"),
    (dict(top_p=-0.1), "--top-p must be in (0, 1], not -0.1"),
    (dict(top_p=1.5), "--top-p must be in (0, 1], not 1.5"),
    (dict(max_new_tokens=0), "--max-new-tokens must be at least 1 (leave it out for what the context leaves), not 0"),
    (dict(max_new_tokens=-3), "--max-new-tokens must be at least 1"),
])
def test_sampling_flags_are_checked(setting: dict, message: str) -> None:
    with pytest.raises(EngineError) as error:
        SamplingSettings(**setting)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    with pytest.raises(EngineError, match="^--top-p"):  # the settings of generate and evaluate inherit the checks
        GenerateSettings(checkpoint="ckpt", out=Path("out"), top_p=0.0)


def test_a_prompt_the_grammar_refuses_is_an_error_before_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer, constraint, prompts = tiny("jpeg")
    jobs = [Job(prompts[0], 1), Job(b"", 2), Job(prompts[0], 3), Job(b"", 4)]
    engine = Engine(model, tokenizer, jobs, settings=SamplingSettings(max_new_tokens=4), constraint=constraint,
                    max_batch=2)
    assert set(engine.starts) == {prompts[0], b""}  # one grammar walk per distinct prompt
    monkeypatch.setattr(constraint, "feed", None)  # the engine's prefills reuse those states
    assert len(dict(engine.run())) == 4
    monkeypatch.undo()
    with pytest.raises(EngineError, match=r"^job 2 \(seed 7\): the prompt is not a valid stream prefix \(byte 1\)$"):
        Engine(model, tokenizer, jobs[:2] + [Job(b"\xff\xd9\xff\xd9", 7)], settings=SamplingSettings(),
               constraint=constraint, max_batch=2)


def test_prompts_named_alike_get_their_own_folders(tmp_path: Path) -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    pictures = [png for _, png in sample_crops(2, seed=3)]
    files = [tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.png", tmp_path / "Cat.png",
             tmp_path / "unconditional.png"]
    for index, path in enumerate(files):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(pictures[index % 2])
    tokenizer = ByteTokenizer.train([profile.encode(png) for png in pictures], 300, boundary=profile.token_boundary)
    data = SimpleNamespace(profile=profile, tokenizer=tokenizer, rows=None, document_streams=lambda rows: iter([]))
    settings = GenerateSettings(checkpoint="ckpt", out=tmp_path / "out", prompts=files, unconditional=2)
    names = [job.name for job in prompt_jobs(settings, data, 2048)]
    assert names == ["cat", "cat-2", "Cat-3", "unconditional-2", "unconditional"]


def test_bad_jobs_and_slot_settings_are_one_line_errors_before_sampling() -> None:
    model, tokenizer, _, _ = tiny("jpeg")
    settings = SamplingSettings(max_new_tokens=8)
    for slots in (0, -2):
        with pytest.raises(EngineError, match=r"^--max-batch must be at least 1 slot or 'auto', not -?\d$"):
            Engine(model, tokenizer, [Job(b"", 1)], settings=settings, max_batch=slots)
    for slots in ("auto", 1):
        with pytest.raises(EngineError, match=r"^0\.00 GiB of memory for the KV cache holds no slot: one row at 9 "
                                              r"tokens needs 0\.00 GiB; free memory or lower --max-new-tokens$"):
            Engine(model, tokenizer, [Job(b"", 1)], settings=settings, memory=1000, max_batch=slots)
    too_long = bytes(range(256)) * 3  # more byte tokens than the 512-token context
    with pytest.raises(EngineError, match=r"^a prompt of \d+ tokens leaves no room in the model's 512-token context"):
        Engine(model, tokenizer, [Job(b"", 1), Job(too_long, 2)], settings=settings, max_batch=2)
