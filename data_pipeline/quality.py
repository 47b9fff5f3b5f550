"""Quality gates: every answer is accepted or rejected with a named reason (counted,
never silently kept), and MinHash near-duplicate detection over word n-grams."""

from __future__ import annotations

import collections
import hashlib
import json
import re
from typing import Optional

import numpy as np

from data_pipeline.llm import LLMResponse

REFUSAL = re.compile(r"^\W*(i('m| am) sorry|i can(no|')t (help|write|assist|do)|i('m| am) (not able|unable) to|"
                     r"i won't|as an ai\b)", re.IGNORECASE)


class Rejected(ValueError):
    """An answer that failed a gate; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class GateCounts(collections.Counter):
    """accepted + one count per rejection reason."""

    def acceptance_rate(self) -> float:
        total = sum(self.values())
        return self["accepted"] / total if total else 0.0


def extract_tag(text: str, tag: str) -> Optional[str]:
    """The content of the last complete <tag>...</tag>, stripped; None if there is none."""
    matches = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    return matches[-1].strip() if matches else None


def check_answer(resp: LLMResponse) -> str:
    """Gates every answer passes: not cut at max_tokens, not a refusal, not empty."""
    if resp.truncated:
        raise Rejected("truncated", "stop_reason max_tokens")
    if not resp.text.strip():
        raise Rejected("empty")
    if REFUSAL.search(resp.text):
        raise Rejected("refusal", resp.text[:80])
    return resp.text


def parse_list(resp: LLMResponse) -> list[str]:
    """A JSON array of strings inside <list> tags."""
    body = extract_tag(check_answer(resp), "list")
    if body is None:
        raise Rejected("missing_tag", "<list>")
    try:
        items = json.loads(body)
    except json.JSONDecodeError as e:
        raise Rejected("malformed_json", str(e)) from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Rejected("malformed_json", "expected a JSON array of strings")
    return [i.strip() for i in items if i.strip()]


def parse_document(resp: LLMResponse, min_words: int, max_words: int) -> str:
    body = extract_tag(check_answer(resp), "document")
    if body is None:
        raise Rejected("missing_tag", "<document>")
    if REFUSAL.search(body):
        raise Rejected("refusal", body[:80])
    words = len(body.split())
    if words < min_words:
        raise Rejected("too_short", f"{words} words")
    if words > max_words:
        raise Rejected("too_long", f"{words} words")
    return body


def parse_chat_reply(resp: LLMResponse, min_words: int = 3, max_words: int = 600) -> tuple[str, str]:
    """(reasoning, answer) from <reasoning> and <answer> tags."""
    text = check_answer(resp)
    reasoning, answer = extract_tag(text, "reasoning"), extract_tag(text, "answer")
    if reasoning is None or answer is None:
        raise Rejected("missing_tag", "<reasoning>/<answer>")
    if REFUSAL.search(answer):
        raise Rejected("refusal", answer[:80])
    words = len(answer.split())
    if not min_words <= words <= max_words:
        raise Rejected("too_short" if words < min_words else "too_long", f"{words} words")
    return reasoning, answer


# ---------------------------------------------------------------------------------------
# Near-duplicates: MinHash signatures over word n-grams, LSH bands to find candidates.
# ---------------------------------------------------------------------------------------
_PRIME = np.uint64(4294967311)   # > 2**32


def shingles(text: str, n: int) -> set[str]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class NearDuplicateIndex:
    """Keeps texts whose estimated Jaccard similarity to every kept text is below
    `threshold`; deterministic (fixed hash seeds), so re-runs keep the same texts."""

    def __init__(self, threshold: float = 0.7, ngram: int = 5, num_perm: int = 128, bands: int = 32):
        if num_perm % bands:
            raise ValueError("num_perm must be a multiple of bands")
        self.threshold, self.ngram, self.bands = threshold, ngram, bands
        rng = np.random.default_rng(0)
        self._a = rng.integers(1, 2**31, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, 2**31, num_perm, dtype=np.uint64)
        self._buckets: dict[tuple, list[int]] = collections.defaultdict(list)
        self._signatures: list[np.ndarray] = []
        self.ids: list[str] = []

    def signature(self, text: str) -> np.ndarray:
        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little")
                           for s in shingles(text, self.ngram)], dtype=np.uint64)
        return ((np.outer(hashes, self._a) + self._b) % _PRIME).min(axis=0)

    def _bands(self, sig: np.ndarray):
        rows = len(sig) // self.bands
        return [(i, sig[i * rows:(i + 1) * rows].tobytes()) for i in range(self.bands)]

    def find(self, text: str) -> tuple[Optional[str], np.ndarray]:
        """(id of a kept near-duplicate or None, the text's signature)."""
        sig = self.signature(text)
        seen = set()
        for band in self._bands(sig):
            for j in self._buckets.get(band, ()):
                if j not in seen:
                    seen.add(j)
                    if np.mean(self._signatures[j] == sig) >= self.threshold:
                        return self.ids[j], sig
        return None, sig

    def add_if_new(self, item_id: str, text: str) -> Optional[str]:
        """Add the text unless it near-duplicates a kept one; returns that one's id if so."""
        dup, sig = self.find(text)
        if dup is not None:
            return dup
        index = len(self._signatures)
        self._signatures.append(sig)
        self.ids.append(item_id)
        for band in self._bands(sig):
            self._buckets[band].append(index)
        return None
