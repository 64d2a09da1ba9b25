"""The codec grammar as a transformers ``LogitsProcessor``: valid JPEG and H.264 files from ``generate()``.

    from transformers import AutoModelForCausalLM, LogitsProcessorList
    from train.hf_grammar import CodecGrammar

    model = AutoModelForCausalLM.from_pretrained("hf/jpeg-tiny")          # a folder `python -m train.export` wrote
    grammar = CodecGrammar.from_pretrained("hf/jpeg-tiny", top_k=50)      # its codec profile and tokenizer
    ids, mask = grammar.prompt_ids([b""] * 4)                             # BOS alone: 4 unconditional rows
    out = model.generate(ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=500,
                         logits_processor=LogitsProcessorList([grammar]))
    files = [grammar.file(row) for row in out]                            # whole, valid .jpg (.mp4) files

**Which distribution.** The processor does the filtering itself, as ``train.generate`` does: temperature,
top-k and top-p (``train.engine.filter_logits``), then every token the grammar forbids set to -inf, so
``generate()``'s softmax draws from the filtered distribution masked to the allowed tokens and
renormalised: the distribution ``train.generate`` samples by drawing and redrawing forbidden draws
(``train.engine.judge_draws``). Where the grammar forbids every token the filters leave, the filters are
applied among the allowed tokens instead, as there; where a processor before this one set every allowed
token to -inf (``min_new_tokens`` where only EOS may follow), the allowed tokens are drawn alike: the
grammar wins. A generated token the grammar forbids, EOS included, is an error. transformers must then not
filter again: pass
``top_k=0`` (its default is 50) and leave ``temperature`` and ``top_p`` at 1. The random numbers are
transformers' own (``torch.multinomial``), so samples differ from ``train.generate``'s for the same seed;
their distribution does not. Greedy decoding (``do_sample=False``) picks the likeliest allowed token.

**Ending.** EOS is allowed only where the stream may end (JPEG: after the last MCU; AVC: after a frame's last
slice) and is the only token allowed once the stream is full. A row that reaches ``max_new_tokens`` first
stops inside its stream; ``file()`` makes it whole as ``train.generate`` writes its files (the valid part
kept, the rest filled: grey MCUs, or the frame it stops inside finished with skipped or flat macroblocks),
and ``problems()`` judges a file from its own bytes (``shared.codec.profile.file_problems``).

**Cost.** A mask needs a verdict on every token the filters leave (top-k 50: up to 50 a row and step; the
grammar's caches make repeated ones a lookup), against ``train.generate``'s one verdict for the drawn token;
without top-k the whole vocabulary is judged by a walk of the token trie.

Rows are followed through the ids ``generate()`` passes: each call's rows must extend the previous call's
by one token (beam search may reorder them); anything else starts a new generation, its ids the prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from shared.codec.profile import CodecProfile, file_problems, view
from shared.codec.registry import profile_from_json
from shared.codec.token_constraint import TokenConstraint
from shared.errors import CodecLmError
from shared.format.tokenizer import ByteTokenizer
from train.engine import allowed_tokens, filter_among_allowed, filter_logits, sampling_problem

RECORD = "codec_lm.json"  # what train.export writes beside the model: the profile, BOS and EOS


class HfGrammarError(CodecLmError):
    """A folder, prompt or setting the grammar processor cannot use, or ids it was not given to follow."""


class CodecGrammar(LogitsProcessor):
    """Filters a model's scores as ``train.generate`` does and masks what the codec grammar forbids."""

    def __init__(self, profile: CodecProfile, tokenizer: ByteTokenizer, *, temperature: float = 1.0,
                 top_k: int | None = 50, top_p: float = 1.0) -> None:
        problem = sampling_problem(temperature, top_k, top_p, flags=False)  # the engine's checks, its words
        if problem is not None:
            raise HfGrammarError(problem)
        self.profile, self.tokenizer = profile, tokenizer
        self.temperature, self.top_k, self.top_p = temperature, top_k or None, top_p
        self.constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
        self.vocab_size, self.bos_id, self.eos_id = tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id
        self._ids: torch.Tensor | None = None  # the ids of the previous call
        self._states: list[Any] = []  # per row: its grammar state, or None once it has ended (EOS)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **sampling: Any) -> CodecGrammar:
        """The grammar of a model folder ``train.export`` wrote: its codec profile (codec_lm.json) and
        tokenizer (tokenizer.json). ``sampling``: temperature, top_k, top_p."""
        folder = Path(folder)
        if not (folder / RECORD).is_file() or not (folder / "tokenizer.json").is_file():
            raise HfGrammarError(f"{folder}: no {RECORD} and tokenizer.json; give a folder `python -m train.export` "
                                 "wrote")
        record = json.loads((folder / RECORD).read_text())
        tokenizer = ByteTokenizer.from_file(folder / "tokenizer.json")
        if (tokenizer.bos_id, tokenizer.eos_id) != (record.get("bos_id"), record.get("eos_id")):
            raise HfGrammarError(f"{folder}: tokenizer.json's BOS/EOS ids ({tokenizer.bos_id}, {tokenizer.eos_id}) "
                                 f"are not {RECORD}'s ({record.get('bos_id')}, {record.get('eos_id')})")
        return cls(profile_from_json(record["profile"]), tokenizer, **sampling)

    # ---- prompts in, files out ----------------------------------------------------------------------
    def prompt_ids(self, prompts: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) for ``generate()``: BOS and each prompt stream's tokens (b"": BOS alone),
        left-padded with EOS. A prompt that is no valid stream prefix is refused here, before any sampling."""
        if not prompts:
            raise HfGrammarError("give at least one prompt (b\"\" samples from BOS alone)")
        for index, prompt in enumerate(prompts):
            try:
                self.constraint.feed(self.constraint.start(), prompt)
            except ValueError as error:
                raise HfGrammarError(f"prompt {index} is not the start of a {self.profile.name} stream "
                                     f"({error})") from None
        encoded = [self.tokenizer.encode(prompt, bos=True).tolist() for prompt in prompts]
        width = max(map(len, encoded))
        ids = torch.tensor([[self.eos_id] * (width - len(row)) + row for row in encoded])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in encoded])
        return ids, mask

    def stream(self, ids: torch.Tensor | list[int]) -> bytes:
        """The codec stream of a generated row: its prompt and sampled tokens' bytes (BOS, EOS and padding
        stand for none)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode([token for token in ids if token < self.vocab_size])

    def file(self, ids: torch.Tensor | list[int]) -> bytes | None:
        """The file a generated row makes (``profile.view_suffix``: .jpg, .mp4), whole and valid however the
        row ended, as ``train.generate`` writes it; None when there is nothing to show."""
        return view(self.profile, self.stream(ids)).file

    def problems(self, file: bytes | None) -> tuple[str, ...]:
        """What is wrong with such a file, judged from its own bytes at its strictest (empty: nothing)."""
        return file_problems(self.profile, file)

    # ---- the processor ------------------------------------------------------------------------------
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        states = self._follow(input_ids)
        logits = scores[:, :self.vocab_size].float().clone()  # ids past the tokenizer's are never sampled
        logits[:, self.bos_id] = float("-inf")  # BOS never comes mid-stream
        filtered = filter_logits(logits, self.temperature, self.top_k, self.top_p)
        finite = torch.isfinite(filtered).cpu().numpy()
        out = torch.full_like(scores, float("-inf"))
        for row, state in enumerate(states):
            if state is None:  # ended: generate() pads it with EOS
                out[row, self.eos_id] = 0.0
                continue
            allowed = allowed_tokens(self.constraint, state, np.flatnonzero(finite[row]))
            if allowed.size:
                index = torch.from_numpy(allowed).to(out.device)
                out[row, index] = filtered[row, index].to(out.dtype)
            else:  # the grammar forbids everything the filters leave: filter among the allowed tokens instead
                out[row, :self.vocab_size] = filter_among_allowed(
                    self.constraint, state, logits[row], temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p).to(out.dtype)
                if not torch.isfinite(out[row]).any():  # an earlier processor set every allowed token to -inf
                    # (min_new_tokens' EOS where only EOS may follow): the grammar wins, its tokens alike
                    index = torch.from_numpy(np.flatnonzero(self.constraint.allowed(state))).to(out.device)
                    out[row, index] = 0.0
        return out

    def _follow(self, input_ids: torch.Tensor) -> list[Any]:
        """Every row's grammar state after ``input_ids``: the previous call's rows advanced by their new token,
        or, at a new generation, each row's ids fed from the start."""
        previous, self._ids = self._ids, input_ids.detach().clone()
        if previous is not None and input_ids.shape[1] == previous.shape[1] + 1:
            if torch.equal(input_ids[:, :-1], previous):  # row for row: sampling
                same = torch.eye(len(previous), dtype=torch.bool, device=previous.device)
            else:  # beam search reorders rows: [row, previous row]
                same = (input_ids[:, :-1].unsqueeze(1) == previous.unsqueeze(0)).all(dim=-1)
            if bool(same.any(dim=1).all()):
                parents = same.int().argmax(dim=1).tolist()
                tokens = input_ids[:, -1].tolist()
                self._states = [self._advance(self._states[parent], token)
                                for parent, token in zip(parents, tokens)]
                return self._states
        self._states = [self._prompt_state(row, ids) for row, ids in enumerate(input_ids.tolist())]
        return self._states

    def _advance(self, state: Any, token: int) -> Any:
        """The row's state after ``token``: None once it has ended (EOS, then its padding)."""
        if state is None:
            return None
        after = self.constraint.try_advance(state, token)  # EOS too: only where the stream may end
        if after is None:
            raise HfGrammarError(f"token {token} was generated where the grammar forbids it: a processor or warper "
                                 "after this one changed the scores (pass top_k=0 and leave temperature and top_p "
                                 "at 1; filter with this processor's own)")
        return None if token == self.eos_id else after

    def _prompt_state(self, row: int, ids: list[int]) -> Any:
        if any(token >= self.vocab_size or token < 0 for token in ids):
            raise HfGrammarError(f"row {row} holds ids outside the tokenizer's {self.vocab_size}")
        try:
            return self.constraint.feed(self.constraint.start(), self.tokenizer.decode(ids))
        except ValueError as error:
            raise HfGrammarError(f"row {row} is not the start of a {self.profile.name} stream ({error})") from None
