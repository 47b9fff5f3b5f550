"""An OpenAI-compatible chat-completions endpoint (e.g. a local vLLM server with an open
model), for users without Claude access. base_url is the API root, e.g.
http://localhost:8000/v1. The key (if any) comes from OPENAI_API_KEY (or `api_key_env`),
never from the Anthropic key's variable."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

from data_pipeline.llm.base import LLMClient
from data_pipeline.llm.types import FatalAPIError, LLMError, LLMRequest, LLMResponse, TransientError, Usage

FINISH_TO_STOP = {"length": "max_tokens", "stop": "end_turn"}


class OpenAICompatibleClient(LLMClient):
    name = "openai"

    def _call(self, req: LLMRequest) -> LLMResponse:
        if not self.config.base_url:
            raise LLMError("the openai backend needs base_url (e.g. http://localhost:8000/v1)")
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + list(req.messages)
        body = json.dumps({"model": req.model, "messages": messages, "max_tokens": req.max_tokens,
                           "temperature": req.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.config.key_env())
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as r:
                payload = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code in (408, 409, 429) or e.code >= 500:
                raise TransientError(f"HTTP {e.code} from {url}") from None
            if e.code in (401, 403):
                raise FatalAPIError(f"HTTP {e.code} from {url}: the key in ${self.config.key_env()} "
                                    f"was refused") from None
            raise FatalAPIError(f"HTTP {e.code} from {url} for model {req.model!r}") from None
        except ValueError:   # a 200 whose body is not JSON
            raise TransientError(f"unreadable response body from {url}", billed=True) from None
        except (socket.timeout, TimeoutError):
            raise TransientError(f"timed out after {self.config.timeout_s}s") from None
        except urllib.error.URLError as e:
            raise TransientError(f"cannot reach {url}: {e.reason}") from None
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        return LLMResponse(text=choice["message"].get("content") or "",
                           stop_reason=FINISH_TO_STOP.get(choice.get("finish_reason"), choice.get("finish_reason") or ""),
                           usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
                           model=payload.get("model", req.model))
