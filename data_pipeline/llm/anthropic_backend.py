"""`anthropic`: the Messages API (spec block cached with cache_control) and the Message
Batches API for bulk stages, with recovery of a killed run's batches by their ids.

Retries are ours (LLMClient._with_retries: backoff honouring retry-after, injectable
sleep); the SDK's own retries are switched off so every attempt is counted, and the SDK's
per-request timeout is used as is.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from data_pipeline.llm.base import LLMClient
from data_pipeline.llm.types import (LLMError, LLMFailure, LLMRequest, LLMResponse,
                                     SpendLimitReached, TransientError, Usage)
from msm_jax.errors import UserError

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


def _retry_after_s(headers) -> Optional[float]:
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


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
        self._sdk = anthropic.Anthropic(api_key=api_key, base_url=config.base_url,
                                        timeout=config.timeout_s, max_retries=0)

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

    def _sdk_call(self, fn, *args, **kwargs):
        """Run one SDK call, turning its errors into ours (transient or not)."""
        a = self._anthropic
        try:
            return fn(*args, **kwargs)
        except a.APITimeoutError:
            raise TransientError(f"timed out after {self.config.timeout_s}s") from None
        except a.APIConnectionError as e:
            raise TransientError(f"connection error: {type(e).__name__}") from None
        except a.APIStatusError as e:
            message = f"HTTP {e.status_code}: {getattr(e, 'message', '')}"[:300]
            if e.status_code in RETRYABLE_STATUS:
                raise TransientError(message, _retry_after_s(e.response.headers)) from None
            raise LLMError(message) from None
        except a.APIError as e:   # e.g. a response body the SDK cannot parse
            raise LLMError(f"{type(e).__name__}: {str(e)[:300]}") from None

    def _call(self, req: LLMRequest) -> LLMResponse:
        params = self.params(req)
        # SDK 2.x no longer names `temperature`; it still reaches the API as an extra field.
        extra = {"temperature": params.pop("temperature")} if "temperature" in params else None
        message = self._sdk_call(self._sdk.messages.create, **params, extra_body=extra)
        return self.to_response(message)

    # -- Message Batches API -------------------------------------------------------------
    def _retrying(self, fn, *args, **kwargs):
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._sdk_call(fn, *args, **kwargs)
            except TransientError as e:
                if attempt == self.config.max_retries:
                    raise LLMError(f"batch API: gave up after {attempt + 1} attempts: {e}") from None
                self.retries += 1
                self.sleep(self._backoff_s(attempt, e.retry_after_s))

    def _call_batch(self, reqs: dict[str, LLMRequest]) -> dict[str, LLMResponse | LLMFailure]:
        """Resume the batches a killed run left, submit the rest in chunks, then fall back
        to the Messages API for each request a batch did not answer (never the whole batch)."""
        results: dict[str, LLMResponse | LLMFailure] = {}
        for batch_id, keys in self.store.pending_batches().items():
            if any(k in reqs for k in keys):
                self._collect(batch_id, reqs)
        todo = [k for k in reqs if k not in self.store]
        size = self.config.batch_chunk_size
        try:
            for start in range(0, len(todo), size):
                self.spend.check()
                chunk = todo[start:start + size]
                batch = self._retrying(self._sdk.messages.batches.create, requests=[
                    {"custom_id": k, "params": self.params(reqs[k])} for k in chunk])
                self.store.record_batch(batch.id, chunk)   # at once: a killed run resumes by id
                self._collect(batch.id, reqs)
        except SpendLimitReached as e:
            for key in reqs:
                if key not in self.store:
                    results[key] = LLMFailure(str(e), key, "spend_limit")
        leftovers = {k: r for k, r in reqs.items() if k not in self.store and k not in results}
        results.update(self._call_concurrently(leftovers))
        for key in reqs:
            if key not in results:
                results[key] = self.store.get(key)
        return results

    def _collect(self, batch_id: str, reqs: dict[str, LLMRequest]) -> None:
        """Wait for a batch to end and store every succeeded answer; the others stay missing
        (errored, expired, canceled) and are retried one by one by the caller."""
        waited, canceled = 0.0, False
        while True:
            batch = self._retrying(self._sdk.messages.batches.retrieve, batch_id)
            if batch.processing_status == "ended":
                break
            if waited >= self.config.batch_max_wait_s and not canceled:
                # A canceled batch ends soon; its answered part is still collected.
                self._retrying(self._sdk.messages.batches.cancel, batch_id)
                canceled = True
            self.sleep(self.config.batch_poll_interval_s)
            waited += max(self.config.batch_poll_interval_s, 1e-3)
        for item in self._retrying(self._sdk.messages.batches.results, batch_id):
            if item.result.type != "succeeded":
                continue
            resp = self.to_response(item.result.message)
            req = reqs.get(item.custom_id)
            if req is None:   # from a resumed batch of another call: store it under its key
                self.store.put(_placeholder_request(resp.model), resp, item.custom_id)
                continue
            self.store.put(req, resp, item.custom_id)
            self.spend.add_paid(req.stage, req.model, resp.usage, batch=True)
        self.store.record_batch_collected(batch_id)


def _placeholder_request(model: str) -> LLMRequest:
    """A placeholder request for an answer whose full request this call does not know."""
    return LLMRequest(model=model, messages=[], max_tokens=0, metadata={"stage": "resumed_batch"})
