"""A content-addressed JSONL store of every request and answer.

Layout of a store directory:
  answers.jsonl  one line per answer: {"key", "request", "response"}; the request's system
                 prompt is kept once, by hash, in systems.jsonl (specs are long).
  systems.jsonl  {"sha", "text"}
  batches.jsonl  {"event": "creating", "intent", "keys", "at"} before a batch is created (so a
                 lost create response is reconciled, even by a later run: the batch is looked
                 up among the account's recent batches before another is created),
                 {"event": "submitted", "batch_id", "keys", "intent"} as soon as it is created
                 or found, {"event": "abandoned", "intent"} when none was created,
                 {"event": "collected", "batch_id"} once its results are stored.
Lines are appended and flushed one at a time, so a killed run loses at most the line being
written; a torn last line is skipped with a warning on the next open. A paid answer (even a
truncated one) is stored, so it is never bought twice. The API key is never part of a line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from data_pipeline.llm.types import LLMRequest, LLMResponse, sha256


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"warning: {path}:{lineno}: unreadable line skipped (a run killed mid-write?)",
                      file=sys.stderr)
    return rows


class AnswerStore:
    """Answers by request key; `directory=None` keeps them in memory only."""

    def __init__(self, directory: Optional[str | os.PathLike]):
        self.directory = Path(directory) if directory is not None else None
        self._answers: dict[str, dict] = {}
        self._systems: dict[str, str] = {}
        self._batches: dict[str, list[str]] = {}
        self._collected: set[str] = set()
        self._intents: dict[str, dict] = {}     # unresolved create attempts: intent -> {keys, at}
        self._lock = threading.Lock()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            for row in _read_jsonl(self.directory / "systems.jsonl"):
                self._systems[row["sha"]] = row["text"]
            for row in _read_jsonl(self.directory / "answers.jsonl"):
                self._answers[row["key"]] = row
            for row in _read_jsonl(self.directory / "batches.jsonl"):
                if row["event"] == "creating":
                    self._intents[row["intent"]] = {"keys": row["keys"], "at": row["at"]}
                elif row["event"] == "submitted":
                    self._batches[row["batch_id"]] = row["keys"]
                    self._intents.pop(row.get("intent"), None)
                elif row["event"] == "abandoned":
                    self._intents.pop(row["intent"], None)
                else:
                    self._collected.add(row["batch_id"])

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> Optional[LLMResponse]:
        row = self._answers.get(key)
        return LLMResponse.from_dict(row["response"], from_store=True) if row else None

    def _append(self, name: str, row: dict) -> None:
        if self.directory is None:
            return
        line = json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
        with open(self.directory / name, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def put(self, req: LLMRequest, resp: LLMResponse, key: Optional[str] = None) -> bool:
        """Store an answer; False if the key was already stored."""
        key = key or req.key()
        request = {"model": req.model, "messages": req.messages, "max_tokens": req.max_tokens,
                   "temperature": req.temperature, "variant": req.metadata.get("variant", 0),
                   "stage": req.stage, "system_sha": None}
        with self._lock:
            if key in self._answers:
                return False
            if req.system is not None:
                system_sha = sha256(req.system)
                request["system_sha"] = system_sha
                if system_sha not in self._systems:
                    self._systems[system_sha] = req.system
                    self._append("systems.jsonl", {"sha": system_sha, "text": req.system})
            row = {"key": key, "request": request, "response": resp.to_dict()}
            self._answers[key] = row
            self._append("answers.jsonl", row)
        return True

    # -- batches -------------------------------------------------------------------------
    def record_batch_intent(self, keys: list[str]) -> tuple[str, float]:
        """Before a create: (intent id, time) to look the batch up by if the answer is lost."""
        at = time.time()
        intent = sha256(json.dumps([keys, at]))[:16]
        with self._lock:
            self._intents[intent] = {"keys": list(keys), "at": at}
            self._append("batches.jsonl", {"event": "creating", "intent": intent, "keys": list(keys), "at": at})
        return intent, at

    def unresolved_intents(self) -> dict[str, dict]:
        """Create attempts (perhaps of a killed run) with no batch id recorded: {intent: {keys, at}}."""
        with self._lock:
            return {i: dict(v) for i, v in self._intents.items()}

    def abandon_intent(self, intent: str) -> None:
        """The create attempt made no batch (none was found): stop looking for it."""
        with self._lock:
            self._intents.pop(intent, None)
            self._append("batches.jsonl", {"event": "abandoned", "intent": intent})

    def record_batch(self, batch_id: str, keys: list[str], intent: Optional[str] = None) -> None:
        with self._lock:
            self._batches[batch_id] = list(keys)
            self._intents.pop(intent, None)
            self._append("batches.jsonl", {"event": "submitted", "batch_id": batch_id, "keys": list(keys),
                                           "intent": intent})

    def batch_keys(self, batch_id: str) -> list[str]:
        with self._lock:
            return list(self._batches.get(batch_id, []))

    def known_batches(self) -> set[str]:
        with self._lock:
            return set(self._batches)

    def record_batch_collected(self, batch_id: str) -> None:
        with self._lock:
            self._collected.add(batch_id)
            self._append("batches.jsonl", {"event": "collected", "batch_id": batch_id})

    def pending_batches(self) -> dict[str, list[str]]:
        """Batches submitted by an earlier (perhaps killed) run whose results are not stored."""
        with self._lock:
            return {b: k for b, k in self._batches.items() if b not in self._collected}
