"""From a byte automaton to token masks: which BPE tokens may come next.

A token spans several bytes, so it is allowed only if every one of its bytes is. The tokens' bytes form
a trie; one walk of the trie from a state finds all allowed tokens at once, sharing prefixes. Masks are
cached on the grammar's cache key (states that repeat every restart interval or slice share one), so
after warm-up a sampling step costs a dictionary lookup per sequence. With top-k sampling only the
best-ranked tokens need a verdict: ``first_allowed`` checks tokens in logit order until it has k. A
sampler that draws first and judges after (``train.generate``) needs only ``try_advance`` on the tokens it
draws: one verdict per token while the model writes valid tokens.

A grammar provides ``start()``, ``step(state, byte) -> state | None``, ``cache_key(state)``,
``is_done(state)`` (only EOS may follow) and ``can_end(state)`` (EOS may follow).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.codec.profile import ByteGrammar

# Masks and verdicts kept at most; past it a cache starts over. JPEG's states repeat every restart
# interval and stay far below it; AVC's macroblock states are mostly new, and memory must stay bounded.
CACHE_LIMIT = 1 << 18
WIDE = 64  # trie nodes with more children than this ask the grammar for all allowed bytes at once


class TokenConstraint:
    def __init__(self, grammar: ByteGrammar, token_bytes: list[bytes], eos_id: int) -> None:
        self.grammar, self.token_bytes, self.eos_id = grammar, token_bytes, eos_id
        self.vocab_size = len(token_bytes)
        # trie: children[node] maps a byte to a node; ending[node] lists the tokens spelled by the path
        self.children: list[dict[int, int]] = [{}]
        self.ending: list[list[int]] = [[]]
        for token, data in enumerate(token_bytes):
            if not data:
                continue  # BOS/EOS stand for no bytes
            node = 0
            for byte in data:
                if byte not in self.children[node]:
                    self.children[node][byte] = len(self.children)
                    self.children.append({})
                    self.ending.append([])
                node = self.children[node][byte]
            self.ending[node].append(token)
        self._masks: dict[Any, np.ndarray] = {}
        self._verdicts: dict[tuple[Any, int], bool] = {}

    def start(self) -> Any:
        return self.grammar.start()

    def can_end(self, state: Any) -> bool:
        can_end = getattr(self.grammar, "can_end", None)
        return self.grammar.is_done(state) or (can_end is not None and can_end(state))

    def allowed(self, state: Any) -> np.ndarray:
        """Boolean mask over the vocabulary."""
        key = self.grammar.cache_key(state)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.zeros(self.vocab_size, dtype=bool)
            if self.grammar.is_done(state):
                mask[self.eos_id] = True
            else:
                # a grammar that lists a state's allowed bytes at once (``next_bytes``) is asked where the
                # trie branches widely; elsewhere each child's byte is stepped
                next_bytes, step, ending = getattr(self.grammar, "next_bytes", None), self.grammar.step, self.ending
                stack, found = [(0, state)], []  # the mask is set once at the end: one numpy call, not one a node
                while stack:
                    node, at = stack.pop()
                    children = self.children[node]
                    if next_bytes is not None and len(children) > WIDE:
                        steps = ((children[byte], after) for byte, after in next_bytes(at, children).items())
                    else:
                        steps = ((child, step(at, byte)) for byte, child in children.items())
                    for child, after in steps:
                        if after is not None:
                            found += ending[child]
                            stack.append((child, after))
                mask[found] = True
                if self.can_end(state):
                    mask[self.eos_id] = True
            if len(self._masks) >= CACHE_LIMIT // 64:  # a mask is vocabulary-sized
                self._masks.clear()
            self._masks[key] = mask
        return mask

    def mask_is_cheap(self, state: Any) -> bool:
        """The grammar's optional hint (``mask_is_cheap``; False without one) that few tokens can follow
        ``state``, so a sampler may judge its whole filtered set at once. It depends on the state alone, never
        on what happens to be cached: a sampler's path, and so which random numbers it uses, must not depend
        on history."""
        mask_is_cheap = getattr(self.grammar, "mask_is_cheap", None)
        return mask_is_cheap is not None and mask_is_cheap(state)

    def is_allowed(self, state: Any, token: int) -> bool:
        """One token's verdict, cached: cheaper than a whole mask when only a few candidates matter."""
        key = (self.grammar.cache_key(state), token)
        verdict = self._verdicts.get(key)
        if verdict is None:
            if token == self.eos_id:
                verdict = self.can_end(state)
            elif self.grammar.is_done(state) or not self.token_bytes[token]:
                verdict = False
            else:
                at = state
                for byte in self.token_bytes[token]:
                    at = self.grammar.step(at, byte)
                    if at is None:
                        break
                verdict = at is not None
            if len(self._verdicts) >= CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def first_allowed(self, state: Any, ranked: list[int], count: int) -> list[int]:
        """The first ``count`` allowed tokens of ``ranked`` (tokens by falling logit): top-k among the
        allowed tokens, without building the whole mask."""
        found = []
        for token in ranked:
            if self.is_allowed(state, token):
                found.append(token)
                if len(found) == count:
                    break
        return found

    def try_advance(self, state: Any, token: int) -> Any | None:
        """The state after ``token``, or None when the token is not allowed: one verdict, and the walk a
        sampler needs anyway once it has drawn the token. EOS keeps the state."""
        if token == self.eos_id:
            return state if self.can_end(state) else None
        data = self.token_bytes[token]
        if not data or self.grammar.is_done(state):
            return None
        step = self.grammar.step
        for byte in data:
            state = step(state, byte)
            if state is None:
                return None
        return state

    def verdicts(self, state: Any, tokens: list[int]) -> list[bool]:
        """``try_advance``'s verdict on each of ``tokens`` from one state, the walks of their shared prefixes
        made once (a redraw judging a filtered set: its tokens share first bytes)."""
        done, step, token_bytes = self.grammar.is_done(state), self.grammar.step, self.token_bytes
        after: dict[bytes, Any] = {}  # a prefix's bytes -> the state after them, None when forbidden
        found = []
        for token in tokens:
            data = token_bytes[token]
            if token == self.eos_id or not data or done:
                found.append(token == self.eos_id and self.can_end(state))
                continue
            at = state
            for end in range(1, len(data) + 1):
                prefix = data[:end]
                following = after.get(prefix, after)  # the dict itself: not walked yet
                if following is after:
                    following = after[prefix] = step(at, data[end - 1])
                at = following
                if at is None:
                    break
            found.append(at is not None)
        return found

    def advance(self, state: Any, token: int) -> Any:
        """The state after ``token`` (which must be allowed)."""
        for byte in self.token_bytes[token]:
            state = self.grammar.step(state, byte)
            if state is None:
                raise ValueError(f"token {token} is not allowed here")
        return state

    def feed(self, state: Any, data: bytes) -> Any:
        """The state after a byte string (a prompt); raises when it is not a valid prefix."""
        for index, byte in enumerate(data):
            state = self.grammar.step(state, byte)
            if state is None:
                raise ValueError(f"the prompt is not a valid stream prefix (byte {index})")
        return state
