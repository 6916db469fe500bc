"""The ``llm`` executor: one OpenAI-compatible ``POST {base_url}/chat/completions`` per task.

Works with OpenAI, local servers (Ollama ``http://127.0.0.1:11434/v1``, vLLM, llama.cpp)
and gateways. The HTTP client is aiohttp (already installed for aiodocker), so it needs the
asyncio backend, which is what the kernel and the worker CLI run on.

The request: ``messages`` = the ``system_prompt`` option (if any), then one user message with
the task's description and, if it has one, its payload as JSON. The result:
``{content, model, finishReason, usage: {promptTokens, completionTokens, totalTokens}}``;
the total is reported as ``task.progress`` too.

Errors are values with stable keys (the decision is the pure `error_key_for` and
`retry_delay_s`):

=====================================  =====================  ==========================
response                               errorKey               retried
=====================================  =====================  ==========================
401, 403                               ``llm.auth``           no
404                                    ``llm.not_found``      no
429                                    ``llm.rate_limited``   yes, after Retry-After
502, 503, 504                          ``llm.server_error``   yes, after Retry-After
other 5xx                              ``llm.server_error``   no
other 4xx                              ``llm.bad_request``    no
no answer within ``timeout_s``         ``llm.timeout``        no
connection refused, DNS failure        ``llm.unreachable``    no
connection dropped, other I/O error    ``llm.connection``     no
not the JSON of a completion           ``llm.bad_response``   no
=====================================  =====================  ==========================

``llm.timeout`` is this request's own budget; ``executor.timeout`` stays the task's
``timeoutS``, set by the worker around the whole executor. Retries are at most
``max_retries``, each waiting Retry-After (seconds or an HTTP date) or else 1, 2, 4... s,
never more than ``max_backoff_s``, on the task's clock.

The API key comes from the ``api_key`` option or, better, the environment variable named by
``api_key_env`` (default ``OPENAI_API_KEY``); with none, no Authorization header is sent
(local servers). It is never put in an error message.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from ..clock import Clock, run_with_timeout
from ..protocol import MAX_RESULT_BYTES, Assignment
from .executors import Completed, ExecutionContext, Failed, Outcome

__all__ = ["LlmExecutor", "LlmOptions", "error_key_for", "retry_delay_s"]

log = logging.getLogger(__name__)

_RETRIED = frozenset({429, 502, 503, 504})
_MAX_BODY_BYTES = 8 * 1024 * 1024


class LlmOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``options`` of an ``llm`` worker; base_url and model fall back to the environment."""

    base_url: str | None = None  # else $OPENAI_BASE_URL
    model: str | None = None  # else $OPENAI_MODEL
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 3
    max_backoff_s: float = 60.0
    system_prompt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None


class _Message(msgspec.Struct, frozen=True):
    content: str | None = None


class _Choice(msgspec.Struct, frozen=True):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct, frozen=True):
    choices: list[_Choice]
    model: str = ""
    usage: _Usage | None = None


_decoder = msgspec.json.Decoder(_Completion)


def error_key_for(status: int) -> str:
    """The errorKey of a non-2xx HTTP status."""
    if status in (401, 403):
        return "llm.auth"
    if status == 404:
        return "llm.not_found"
    if status == 429:
        return "llm.rate_limited"
    if status >= 500:
        return "llm.server_error"
    if status >= 400:
        return "llm.bad_request"
    return "llm.bad_response"


def retry_delay_s(
    status: int, retry_after: str | None, *, retry: int, max_backoff_s: float, now_s: float
) -> float | None:
    """Seconds to wait before retry number `retry` (0-based), or None if not retryable."""
    if status not in _RETRIED:
        return None
    delay = 2.0**retry
    if retry_after:
        value = retry_after.strip()
        try:
            delay = float(value)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                delay = email.utils.parsedate_to_datetime(value).timestamp() - now_s
    if not math.isfinite(delay):
        delay = max_backoff_s
    return min(max(0.0, delay), max_backoff_s)


class _Reply(msgspec.Struct, frozen=True):
    status: int
    retry_after: str | None
    body: bytes


class LlmExecutor:
    """Sends the task to `model` at `base_url` (``.../v1``) and returns the completion."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        max_backoff_s: float = 60.0,
        system_prompt: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url {base_url!r}: expected http(s)://host[:port]/path")
        if not model:
            raise ValueError("model is empty")
        if timeout_s <= 0 or max_retries < 0 or max_backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries and max_backoff_s >= 0")
        if api_key and parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            log.warning("llm executor sends its API key in clear text to %s", parts.hostname)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._headers = {"Content-Type": "application/json", "User-Agent": "jarvis-kernel"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, environ: Mapping[str, str]) -> LlmExecutor:
        """Build from a worker's ``options``, filling the gaps from `environ`."""
        opts = msgspec.convert(dict(options), LlmOptions)
        base_url = opts.base_url or environ.get("OPENAI_BASE_URL")
        model = opts.model or environ.get("OPENAI_MODEL")
        if not base_url:
            raise ValueError("no base_url (option base_url or $OPENAI_BASE_URL)")
        if not model:
            raise ValueError("no model (option model or $OPENAI_MODEL)")
        return cls(
            base_url=base_url,
            model=model,
            api_key=opts.api_key or environ.get(opts.api_key_env) or None,
            timeout_s=opts.timeout_s,
            max_retries=opts.max_retries,
            max_backoff_s=opts.max_backoff_s,
            system_prompt=opts.system_prompt,
            temperature=opts.temperature,
            max_tokens=opts.max_tokens,
        )

    def request_body(self, task: Assignment) -> dict[str, Any]:
        """The JSON sent for `task`."""
        user = task.description
        if task.payload:
            user += "\n\nPayload (JSON):\n" + msgspec.json.encode(task.payload).decode()
        messages = [{"role": "user", "content": user.strip()}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    async def run(self, task: Assignment, ctx: ExecutionContext) -> Outcome:
        if not task.description.strip() and not task.payload:
            return Failed(error_key="executor.bad_payload", error="no description or payload")
        data = msgspec.json.encode(self.request_body(task))
        async with aiohttp.ClientSession(headers=self._headers) as session:
            retry = 0
            while True:
                reply = await self._post(session, data, ctx.clock)
                if isinstance(reply, Failed):
                    return reply
                if 200 <= reply.status < 300:
                    return await self._completed(reply.body, ctx)
                delay = retry_delay_s(
                    reply.status,
                    reply.retry_after,
                    retry=retry,
                    max_backoff_s=self.max_backoff_s,
                    now_s=ctx.clock.time_ms() / 1000,
                )
                if delay is None or retry >= self.max_retries:
                    return self._http_error(reply)
                log.info("llm: HTTP %s, retry %d in %.1f s", reply.status, retry + 1, delay)
                await ctx.clock.sleep(delay)
                retry += 1

    async def _post(
        self, session: aiohttp.ClientSession, data: bytes, clock: Clock
    ) -> _Reply | Failed:
        # Foreign exceptions become values inside: run_with_timeout's task group would
        # wrap them in an ExceptionGroup.
        async def post() -> _Reply | Failed:
            try:
                return await self._exchange(session, data)
            except aiohttp.ClientConnectorError as exc:
                return Failed(error_key="llm.unreachable", error=f"{self.url}: {exc}")
            except (aiohttp.ClientError, OSError) as exc:
                return Failed(error_key="llm.connection", error=f"{self.url}: {exc!r}")

        done, reply = await run_with_timeout(clock, self.timeout_s, post)
        if not done or reply is None:
            return Failed(error_key="llm.timeout", error=f"no answer within {self.timeout_s} s")
        return reply

    async def _exchange(self, session: aiohttp.ClientSession, data: bytes) -> _Reply | Failed:
        async with session.post(self.url, data=data) as resp:
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > _MAX_BODY_BYTES:
                    return Failed(
                        error_key="llm.bad_response", error=f"response over {_MAX_BODY_BYTES} B"
                    )
            return _Reply(
                status=resp.status, retry_after=resp.headers.get("Retry-After"), body=bytes(body)
            )

    def _http_error(self, reply: _Reply) -> Failed:
        detail = reply.body[:500].decode("utf-8", "replace")
        return Failed(
            error_key=error_key_for(reply.status),
            error=f"HTTP {reply.status} from {self.url}: {detail}",
        )

    async def _completed(self, body: bytes, ctx: ExecutionContext) -> Outcome:
        try:
            completion = _decoder.decode(body)
        except msgspec.DecodeError as exc:
            return Failed(error_key="llm.bad_response", error=f"not a chat completion: {exc}")
        if not completion.choices:
            return Failed(error_key="llm.bad_response", error="the completion has no choices")
        choice = completion.choices[0]
        usage = completion.usage or _Usage()
        total = usage.total_tokens
        if total is None:
            total = usage.prompt_tokens + usage.completion_tokens
        if total:
            await ctx.progress(total, f"llm {completion.model or self.model}")
        content = choice.message.content or ""
        result = {
            "content": content,
            "truncated": False,
            "model": completion.model or self.model,
            "finishReason": choice.finish_reason,
            "usage": {
                "promptTokens": usage.prompt_tokens,
                "completionTokens": usage.completion_tokens,
                "totalTokens": total,
            },
        }
        while len(msgspec.json.encode(result)) > MAX_RESULT_BYTES - 256:
            content = content[: len(content) // 2]  # keep the start: it is an answer
            result.update(content=content, truncated=True)
        return Completed(result=result, token_usage=ctx.token_usage)


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
