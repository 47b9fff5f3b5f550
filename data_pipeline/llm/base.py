"""The one client interface: store first, then the backend, with retries and spend checks.

A backend implements `_call(req) -> LLMResponse` (raising TransientError for what is worth
retrying, FatalAPIError for what stops the stage, LLMError otherwise) and may override `_call_batch` for bulk APIs. Everything it
answers goes to the store before the caller sees it.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

from data_pipeline.llm.config import LLMConfig
from data_pipeline.llm.spend import SpendTracker, worst_case_usd
from data_pipeline.llm.store import AnswerStore
from data_pipeline.llm.types import (FatalAPIError, LLMError, LLMFailure, LLMRequest, LLMResponse,
                                     MissingFromStore, SpendLimitReached, TransientError)


class LLMClient:
    name = "base"

    def __init__(self, config: LLMConfig, store: Optional[AnswerStore] = None,
                 spend: Optional[SpendTracker] = None, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.store = store if store is not None else AnswerStore(config.store_dir)
        self.spend = spend if spend is not None else SpendTracker(config.max_spend_usd)
        self.sleep = sleep
        self.retries = 0   # transient failures retried, for reports and tests

    # -- backend hooks ---------------------------------------------------------------------
    def _call(self, req: LLMRequest) -> LLMResponse:
        raise NotImplementedError

    def _call_batch(self, reqs: dict[str, LLMRequest]) -> dict[str, LLMResponse | LLMFailure]:
        """Bulk answers by key; the default sends them one by one, concurrently."""
        return self._call_concurrently(reqs)

    # -- public API ------------------------------------------------------------------------
    def complete(self, req: LLMRequest) -> LLMResponse:
        """One answer: from the store if it holds it, else bought (with retries) and stored.
        Each attempt first reserves its worst-case cost under the spend limit."""
        key = req.key()
        cached = self.store.get(key)
        if cached is not None:
            self.spend.add_from_store(req.stage)
            return cached
        worst = worst_case_usd(req)
        for attempt in range(self.config.max_retries + 1):
            try:
                with self.spend.reserve([worst]):
                    try:
                        resp = self._call(req)
                    except TransientError as e:
                        if e.billed:
                            self.spend.add_unreadable(req.stage, worst)
                        raise
                    self.store.put(req, resp, key)
                    self.spend.add_paid(req.stage, req.model, resp.usage)
                    return resp
            except TransientError as e:
                if attempt == self.config.max_retries:
                    raise LLMError(f"gave up after {attempt + 1} attempts: {e}") from None
                self.retries += 1
                self.sleep(self._backoff_s(attempt, e.retry_after_s))
        raise AssertionError("unreachable")

    def complete_many(self, reqs: Sequence[LLMRequest], use_batch: bool = False
                      ) -> list[LLMResponse | LLMFailure]:
        """Answers in request order. Stored answers are reused; the rest go to the backend,
        through its bulk API when `use_batch`. A request the spend limit stopped is an
        LLMFailure of kind "spend_limit" (everything received is stored and returned);
        FatalAPIError propagates at once, after the calls in flight have ended."""
        keys = [r.key() for r in reqs]
        results: dict[str, LLMResponse | LLMFailure] = {}
        todo: dict[str, LLMRequest] = {}
        for key, req in zip(keys, reqs):
            cached = self.store.get(key)
            if cached is not None:
                self.spend.add_from_store(req.stage)
                results[key] = cached
            else:
                todo[key] = req
        if todo:
            results.update(self._call_batch(todo) if use_batch else self._call_concurrently(todo))
        return [results[k] for k in keys]

    # -- shared machinery ------------------------------------------------------------------
    def _call_concurrently(self, reqs: dict[str, LLMRequest]) -> dict[str, LLMResponse | LLMFailure]:
        fatal: list[FatalAPIError] = []

        def one(item):
            key, req = item
            if fatal:   # a call that cannot succeed stopped the stage: start no more
                return key, LLMFailure("stopped by an earlier fatal error", key, "stopped")
            try:
                return key, self.complete(req)
            except SpendLimitReached as e:
                return key, LLMFailure(str(e), key, "spend_limit")
            except MissingFromStore as e:
                return key, LLMFailure(str(e), key, "missing")
            except FatalAPIError as e:
                fatal.append(e)
                return key, LLMFailure(str(e), key, "stopped")
            except LLMError as e:
                return key, LLMFailure(str(e), key, "error")

        workers = min(self.config.max_concurrency, len(reqs)) or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = dict(pool.map(one, reqs.items()))
        if fatal:
            raise fatal[0]
        return results

    def _backoff_s(self, attempt: int, retry_after_s: Optional[float]) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.config.retry_max_backoff_s)
        base = self.config.retry_backoff_s * (2 ** attempt)
        return min(base, self.config.retry_max_backoff_s) * random.uniform(0.75, 1.0)
