"""`anthropic`: the Messages API (spec block cached with cache_control) and the Message
Batches API for bulk stages, with recovery of a killed run's batches by their ids.

Retries are ours (backoff honouring retry-after, injectable sleep); the SDK's own retries
are switched off so every attempt is counted, and the SDK's per-request timeout is used as
is. What retrying can fix (429/5xx/529, timeouts, dropped connections, a 200 whose body is
not JSON, a results stream cut short) is retried; what it cannot (401, 403, 404, 400) raises
FatalAPIError, which stops the stage. A batch create whose answer is lost is reconciled:
the create is recorded first, and before another attempt the account's recent batches are
listed and one the lost attempt created is adopted, so no chunk is bought twice.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Optional

from data_pipeline.llm.base import LLMClient
from data_pipeline.llm.spend import worst_case_usd
from data_pipeline.llm.types import (FatalAPIError, LLMError, LLMFailure, LLMRequest, LLMResponse,
                                     SpendLimitReached, TransientError, Usage)
from msm_jax.errors import UserError

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
LIST_LIMIT = 100              # recent batches looked at when reconciling a lost create
CLOCK_SKEW_S = 300.0          # a batch created this long before our create attempt may still be ours


def _retry_after_s(headers) -> Optional[float]:
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


def _http_errors() -> tuple[type, ...]:
    """httpx's base error (the SDK ships it as `httpx` or `httpx2`), raised while a
    response body is streamed outside the SDK's own error handling."""
    return tuple(m.HTTPError for m in (sys.modules.get("httpx"), sys.modules.get("httpx2")) if m is not None)


class AnthropicClient(LLMClient):
    name = "anthropic"

    def __init__(self, config, store=None, spend=None, sleep=time.sleep):
        super().__init__(config, store, spend, sleep)
        import anthropic  # heavy; only when this backend is used

        self._anthropic = anthropic
        api_key = os.environ.get(config.key_env())
        if not api_key:
            raise UserError(f"the anthropic backend needs an API key in the environment variable "
                            f"{config.key_env()} (or use --backend replay to re-run from the store)")
        self._key = api_key
        self._sdk = anthropic.Anthropic(api_key=api_key, base_url=config.base_url,
                                        timeout=config.timeout_s, max_retries=0)
        self._stream_errors = _http_errors()

    # -- Messages API --------------------------------------------------------------------
    @staticmethod
    def params(req: LLMRequest) -> dict:
        params = {"model": req.model, "max_tokens": req.max_tokens, "messages": req.messages}
        if req.temperature != 1.0:   # 1.0 is the API default: send the field only when it differs
            params["temperature"] = req.temperature
        if req.system is not None:
            block = {"type": "text", "text": req.system}
            if req.cache_system:
                block["cache_control"] = {"type": "ephemeral"}
            params["system"] = [block]
        return params

    @staticmethod
    def to_response(message) -> LLMResponse:
        text = "".join(getattr(b, "text", "") for b in message.content if getattr(b, "type", "") == "text")
        u = message.usage
        usage = Usage(u.input_tokens or 0, u.output_tokens or 0,
                      getattr(u, "cache_creation_input_tokens", 0) or 0,
                      getattr(u, "cache_read_input_tokens", 0) or 0)
        return LLMResponse(text=text, stop_reason=message.stop_reason or "", usage=usage, model=message.model)

    def _fatal(self, status: int, detail: str, what: str) -> FatalAPIError:
        """One line naming the key's variable or the model; the key itself never appears."""
        env = self.config.key_env()
        if status == 401:
            return FatalAPIError(f"the API key in ${env} was refused (HTTP 401 authentication error); "
                                 f"check or replace it")
        if status == 403:
            return FatalAPIError(f"the API key in ${env} is not allowed to use {what} (HTTP 403 permission denied)")
        if status == 404:
            return FatalAPIError(f"HTTP 404 not found for {what} (a misspelt model name?): {detail}")
        return FatalAPIError(f"HTTP {status} for {what}: {detail}")

    def _sdk_call(self, what: str, fn, *args, **kwargs):
        """Run one SDK call, turning its errors into ours (transient, fatal or other);
        `what` names the model or batch for the error line."""
        a = self._anthropic
        try:
            return fn(*args, **kwargs)
        except a.APITimeoutError:
            raise TransientError(f"timed out after {self.config.timeout_s}s") from None
        except a.APIConnectionError as e:
            raise TransientError(f"connection error: {type(e).__name__}") from None
        except a.APIStatusError as e:
            detail = str(getattr(e, "api_message", None) or getattr(e, "message", ""))
            detail = detail.replace(self._key, "[key]")[:200]
            if e.status_code in RETRYABLE_STATUS or e.status_code >= 500:
                raise TransientError(f"HTTP {e.status_code}: {detail}", _retry_after_s(e.response.headers)) from None
            raise self._fatal(e.status_code, detail, what) from None
        except a.APIError as e:   # e.g. a body the SDK's validation refuses
            raise TransientError(f"{type(e).__name__} for {what}: {str(e).replace(self._key, '[key]')[:200]}",
                                 billed=True) from None
        except ValueError as e:   # a 200 whose body is not JSON: answered (billed) but unreadable
            raise TransientError(f"unreadable response body for {what} ({type(e).__name__})", billed=True) from None

    def _call(self, req: LLMRequest) -> LLMResponse:
        params = self.params(req)
        # SDK 2.x no longer names `temperature`; it still reaches the API as an extra field.
        extra = {"temperature": params.pop("temperature")} if "temperature" in params else None
        message = self._sdk_call(f"model {req.model!r}", self._sdk.messages.create, **params, extra_body=extra)
        return self.to_response(message)

    # -- Message Batches API -------------------------------------------------------------
    def _retrying(self, what: str, fn, *args, **kwargs):
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._sdk_call(what, fn, *args, **kwargs)
            except TransientError as e:
                if attempt == self.config.max_retries:
                    raise LLMError(f"batch API: gave up on {what} after {attempt + 1} attempts: {e}; "
                                   f"rerun to resume (batch ids are in the store)") from None
                self.retries += 1
                self.sleep(self._backoff_s(attempt, e.retry_after_s))

    def _call_batch(self, reqs: dict[str, LLMRequest]) -> dict[str, LLMResponse | LLMFailure]:
        """Resume the batches a killed run left (and find the ones whose create answer it
        lost), submit the rest in chunks that fit under the spend limit, then fall back to
        the Messages API for each request a batch did not answer (never the whole batch)."""
        for intent, row in self.store.unresolved_intents().items():
            if any(k in reqs and k not in self.store for k in row["keys"]) and \
                    not self._adopt_lost_batches(intent, row["keys"], row["at"]):
                self.store.abandon_intent(intent)
        for batch_id, keys in self.store.pending_batches().items():
            if any(k in reqs for k in keys):
                self._collect(batch_id, reqs)
        results: dict[str, LLMResponse | LLMFailure] = {}
        todo = [k for k in reqs if k not in self.store]
        start = 0
        try:
            while start < len(todo):
                chunk = todo[start:start + self.config.batch_chunk_size]
                with self.spend.reserve([worst_case_usd(reqs[k], batch=True) for k in chunk]) as n:
                    chunk = chunk[:n]
                    batch_id = self._create(chunk, reqs)
                    self._collect(batch_id, reqs)
                start += len(chunk)
        except SpendLimitReached as e:
            for key in todo[start:]:
                if key not in self.store:
                    results[key] = LLMFailure(str(e), key, "spend_limit")
        leftovers = {k: r for k, r in reqs.items() if k not in self.store and k not in results}
        results.update(self._call_concurrently(leftovers))
        for key in reqs:
            if key not in results:
                results[key] = self.store.get(key)
        return results

    def _create(self, chunk: list[str], reqs: dict[str, LLMRequest]) -> str:
        """Create one batch (custom_id = request key); on a failed attempt, adopt the batch
        it may have created before trying again. Returns the batch id, recorded at once."""
        models = sorted({reqs[k].model for k in chunk})
        what = f"a batch for model {', '.join(map(repr, models))}"
        intent, at = self.store.record_batch_intent(chunk)
        body = [{"custom_id": k, "params": self.params(reqs[k])} for k in chunk]
        for attempt in range(self.config.max_retries + 1):
            try:
                batch = self._sdk_call(what, self._sdk.messages.batches.create, requests=body)
                self.store.record_batch(batch.id, chunk, intent)   # at once: a killed run resumes by id
                return batch.id
            except TransientError as e:
                adopted = self._adopt_lost_batches(intent, chunk, at)
                if adopted:
                    return adopted[0]
                if attempt == self.config.max_retries:
                    raise LLMError(f"batch API: gave up creating {what} after {attempt + 1} attempts: {e}") from None
                self.retries += 1
                self.sleep(self._backoff_s(attempt, e.retry_after_s))
        raise AssertionError("unreachable")

    def _adopt_lost_batches(self, intent: str, keys: list[str], at: float) -> list[str]:
        """Batches among the account's most recent that a lost create attempt made: created
        since the attempt, of its size, and unknown to the store. Each is recorded as ours
        (its items are stored only under this attempt's keys, so a stranger's batch adds nothing)."""
        page = self._retrying("listing batches", self._sdk.messages.batches.list, limit=LIST_LIMIT)
        since = datetime.datetime.fromtimestamp(at - CLOCK_SKEW_S, tz=datetime.timezone.utc)
        known = self.store.known_batches()
        found = []
        for batch in reversed(page.data):   # oldest first
            counts = batch.request_counts
            size = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
            if batch.id not in known and batch.created_at >= since and size == len(keys):
                self.store.record_batch(batch.id, keys, intent)
                found.append(batch.id)
        return found

    def _collect(self, batch_id: str, reqs: dict[str, LLMRequest]) -> None:
        """Wait for a batch to end and store every succeeded answer; the others stay missing
        (errored, expired, canceled) and are retried one by one by the caller."""
        what = f"batch {batch_id}"
        waited, canceled = 0.0, False
        while True:
            batch = self._retrying(what, self._sdk.messages.batches.retrieve, batch_id)
            if batch.processing_status == "ended":
                break
            if waited >= self.config.batch_max_wait_s and not canceled:
                # A canceled batch ends soon; its answered part is still collected.
                self._retrying(what, self._sdk.messages.batches.cancel, batch_id)
                canceled = True
            self.sleep(self.config.batch_poll_interval_s)
            waited += max(self.config.batch_poll_interval_s, 1e-3)
        c = batch.request_counts
        expected = c.succeeded + c.errored + c.canceled + c.expired
        keys = set(self.store.batch_keys(batch_id))
        for attempt in range(self.config.max_retries + 1):
            try:
                self._read_results(batch_id, expected, keys, reqs)
                break
            except TransientError as e:
                if attempt == self.config.max_retries:
                    raise LLMError(f"batch API: gave up reading the results of {what} after {attempt + 1} "
                                   f"attempts: {e}; rerun to resume it by id") from None
                self.retries += 1
                self.sleep(self._backoff_s(attempt, e.retry_after_s))
        self.store.record_batch_collected(batch_id)

    def _read_results(self, batch_id: str, expected: int, keys: set[str], reqs: dict[str, LLMRequest]) -> None:
        """Stream a batch's results, storing (and charging, once per item) each succeeded
        answer as it arrives; a stream cut short raises TransientError (read it again)."""
        what = f"the results of batch {batch_id}"
        seen = 0
        try:
            for item in self._sdk_call(what, self._sdk.messages.batches.results, batch_id):
                seen += 1
                if item.result.type != "succeeded" or item.custom_id not in keys:
                    continue
                resp = self.to_response(item.result.message)
                req = reqs.get(item.custom_id) or _placeholder_request(resp.model)
                self.store.put(req, resp, item.custom_id)
                self.spend.add_paid(req.stage, resp.model, resp.usage, batch=True,
                                    charge_id=f"{batch_id}/{item.custom_id}")
        except self._stream_errors as e:
            raise TransientError(f"{what} were cut short ({type(e).__name__})") from None
        except ValueError as e:   # a torn JSON line
            raise TransientError(f"{what} were cut short ({type(e).__name__})") from None
        if seen < expected:
            raise TransientError(f"{what} ended after {seen} of {expected} items")


def _placeholder_request(model: str) -> LLMRequest:
    """A placeholder request for an answer whose full request this call does not know."""
    return LLMRequest(model=model, messages=[], max_tokens=0, metadata={"stage": "resumed_batch"})
