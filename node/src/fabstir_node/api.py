"""OpenAI-compatible HTTP API over the engine: chat and text completions (JSON or SSE),
embeddings, models, health and Prometheus metrics.

Requests and errors follow OpenAI's shapes so that stock OpenAI clients work unchanged: an
error is ``{"error": {"message", "type", "param", "code"}}`` with the matching status code.

The answer cache is an extension: a chat request may carry ``"fabstir": {"cache": "own" |
"shared", "min_similarity": 0.9, "sampled": false, "share": false}`` (OpenAI clients send it
through ``extra_body``), and an answer served from the cache carries ``"fabstir": {"cached":
true, "similarity": ..., "entry": ...}``. All callers of this (unpaid, operator's own) API are
one cache client, :data:`HTTP_CLIENT`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fabstir_node.cache.keys import Sampling, request_key
from fabstir_node.cache.semantic import CachePolicy, Hit, SemanticCache
from fabstir_node.embeddings import MAX_TOKENS as EMBED_MAX_TOKENS
from fabstir_node.embeddings import Embedder, EmbeddingError
from fabstir_node.inference import (
    Engine,
    EngineError,
    EngineNotReady,
    Finished,
    InvalidRequest,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    TokenChunk,
)
from fabstir_node.metrics import CONTENT_TYPE, NodeMetrics
from fabstir_sdk import openai_format as oai

MAX_BODY = 4 * 1024 * 1024
#: The cache client every caller of the HTTP API is (it has no sessions to tell them apart).
HTTP_CLIENT = "http-api"
MAX_EMBED_INPUTS = 256
STATUS = {
    QueueFull: (503, "server_overloaded"),
    PromptTooLong: (400, "invalid_request_error"),
    InvalidRequest: (400, "invalid_request_error"),
    EngineNotReady: (503, "server_not_ready"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def sampling(self, max_tokens_default: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens or max_tokens_default,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(stop),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_template_input(self) -> dict[str, str]:
        parts = self.content
        if isinstance(parts, list):
            return oai.template_message(self.role, [p.model_dump() for p in parts])
        return oai.template_message(self.role, parts)


class CacheOptions(_Strict):
    cache: Literal["off", "own", "shared"] = "off"
    min_similarity: float | None = Field(default=None, ge=0.0, le=1.0)
    sampled: bool = False
    share: bool = False

    @property
    def policy(self) -> CachePolicy:
        return CachePolicy(self.cache, self.min_similarity, self.sampled, self.share)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    fabstir: CacheOptions | None = None

    def sampling(self, max_tokens_default: int) -> SamplingParams:
        params = super().sampling(max_tokens_default)
        if self.max_completion_tokens:
            return SamplingParams(
                self.max_completion_tokens,
                params.temperature,
                params.top_p,
                params.seed,
                params.stop,
            )
        return params


class CompletionRequest(_Common):
    prompt: str


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: int = 1,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param
        self.retry_after = retry_after

    def response(self) -> web.Response:
        body = oai.error_body(str(self), self.type, self.code, self.param)
        headers = {"Retry-After": str(self.retry_after)} if self.status == 503 else None
        return web.json_response(body, status=self.status, headers=headers)


def _engine_error(exc: EngineError) -> ApiError:
    status, type_ = STATUS.get(type(exc), (500, "server_error"))
    retry_after = exc.retry_after if isinstance(exc, QueueFull) else 1
    return ApiError(status, str(exc), type_, exc.kind, retry_after=retry_after)


def _usage(done: Finished) -> dict[str, Any]:
    return oai.usage(done.usage.prompt_tokens, done.usage.completion_tokens, done.cached_tokens)


#: Takes a finished answer for the cache: its text, token ids and the limit that cut it.
Keep = Callable[[str, list[int], int | None], Awaitable[None]]


def _encode_vector(vector: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
    return [float(x) for x in vector]


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


class Api:
    """The aiohttp application of one node serving one model."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        *,
        max_tokens_default: int = 512,
        metrics: NodeMetrics | None = None,
        inference: bool = True,
        embedder: Embedder | None = None,
        cache: SemanticCache | None = None,
        model_sha256: bytes = b"",
    ) -> None:
        """``inference=False`` serves only /health and /metrics: the unpaid OpenAI-compatible
        endpoints are off (``fabstir-node run`` without ``--http``)."""
        self.engine = engine
        self.embedder = embedder
        self.cache = cache
        self.model_sha256 = model_sha256
        self.model_name = model_name
        self.max_tokens_default = max_tokens_default
        if metrics is None:
            metrics = NodeMetrics(lambda: engine.queue_depth)
            metrics.watch_engine(engine)
        self.metrics = metrics
        self.created = int(time.time())
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        self.app.add_routes([web.get("/health", self.health), web.get("/metrics", self.prometheus)])
        if inference:
            self.app.add_routes(
                [
                    web.post("/v1/chat/completions", self.chat),
                    web.post("/v1/completions", self.completions),
                    web.get("/v1/models", self.models),
                ]
            )
            if embedder is not None:
                self.app.add_routes([web.post("/v1/embeddings", self.embeddings)])

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        endpoint = request.path
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as exc:
            self.metrics.errors.labels(exc.code or exc.type).inc()
            response = exc.response()
        except web.HTTPException as http:  # routing errors (404, 405) and oversize bodies
            message = "request body too large" if http.status == 413 else http.reason
            error = ApiError(http.status, message, "invalid_request_error")
            self.metrics.errors.labels(error.type).inc()
            response = error.response()
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        return response

    # ----------------------------------------------------------------- routes

    async def models(self, _request: web.Request) -> web.Response:
        names = [self.model_name] + ([self.embedder.name] if self.embedder else [])
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": self.created, "owned_by": "fabstir"}
                    for name in names
                ],
            }
        )

    async def health(self, _request: web.Request) -> web.Response:
        if not self.engine.ready:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response(
            {
                "status": "ok",
                "model": self.model_name,
                "queue_depth": self.engine.queue_depth,
                "parallel": self.engine.parallel,
                "gpu_layers": self.engine.gpu_layers,
            }
        )

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request, ChatRequest)
        assert isinstance(body, ChatRequest)
        messages = [m.as_template_input() for m in body.messages]
        prompt = self._run(lambda: self.engine.chat_prompt(messages))
        options = body.fabstir or CacheOptions()
        params = body.sampling(self.max_tokens_default)
        key = None
        if self.cache is not None and options.cache != "off":
            sampling = Sampling(params.temperature, params.top_p, params.seed, params.stop)
            key = request_key(self.model_sha256, messages, sampling)
        if key is not None:
            assert self.cache is not None
            hit = await self.cache.lookup(
                key,
                HTTP_CLIENT,
                options.policy,
                params.temperature > 0,
                params.max_tokens or self.max_tokens_default,
            )
            if hit is not None:
                return await self._cached(request, body, len(prompt), hit)

        async def keep(text: str, ids: list[int], limit: int | None) -> None:
            if key is not None and self.cache is not None:
                await self.cache.insert(
                    key, self.model_sha256, HTTP_CLIENT, options.policy, ids, text, limit
                )

        return await self._serve(request, body, prompt, chat=True, keep=keep)

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings`` in OpenAI's format (floats or base64 little-endian f32)."""
        assert self.embedder is not None
        body = await self._parse(request, EmbeddingRequest, model=self.embedder.name)
        assert isinstance(body, EmbeddingRequest)
        texts = body.texts
        if not 0 < len(texts) <= MAX_EMBED_INPUTS:
            raise ApiError(
                400,
                f"input holds 1 to {MAX_EMBED_INPUTS} texts",
                "invalid_request_error",
                param="input",
            )
        if body.dimensions is not None and body.dimensions != self.embedder.dimensions:
            raise ApiError(
                400,
                f"{self.embedder.name} has {self.embedder.dimensions} dimensions",
                "invalid_request_error",
                param="dimensions",
            )
        counts = [self.embedder.count_tokens(t) for t in texts]
        for i, (text, n) in enumerate(zip(texts, counts, strict=True)):
            if not text.strip() or n > EMBED_MAX_TOKENS:
                reason = "is empty" if not text.strip() else f"has {n} tokens"
                raise ApiError(
                    400,
                    f"input[{i}] {reason}; each input needs 1 to {EMBED_MAX_TOKENS} tokens",
                    "invalid_request_error",
                    param="input",
                )
        try:
            vectors = await self.embedder.embed(texts)
        except EmbeddingError as exc:
            raise ApiError(400, str(exc), "invalid_request_error", param="input") from None
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode_vector(v, body.encoding_format),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(counts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.embedder.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _cached(
        self, request: web.Request, body: ChatRequest, prompt_tokens: int, hit: Hit
    ) -> web.StreamResponse:
        """An answer from the cache, in the shape a fresh one has, marked ``fabstir.cached``."""
        ident = oai.completion_id(True)
        entry = hit.entry
        usage = oai.usage(prompt_tokens, len(entry.completion_ids))
        mark = oai.cache_mark(round(hit.similarity, 4), entry.id)
        if not body.stream:
            answer = oai.response(
                ident, self.model_name, entry.text, entry.finish, usage, chat=True
            )
            return web.json_response(answer | mark)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())

        def chunk(**kw: Any) -> dict[str, Any]:
            data = oai.chunk(
                ident, self.model_name, created, with_usage=body.include_usage, chat=True, **kw
            )
            return data | mark

        await response.write(oai.sse(chunk(text="", role=True)))
        await response.write(oai.sse(chunk(text=entry.text)))
        await response.write(oai.sse(chunk(text=None, reason=entry.finish)))
        if body.include_usage:
            usage_chunk = oai.usage_chunk(ident, self.model_name, created, usage, chat=True)
            await response.write(oai.sse(usage_chunk))
        await response.write(oai.sse("[DONE]"))
        return response

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request, CompletionRequest)
        assert isinstance(body, CompletionRequest)
        prompt = self._run(lambda: self.engine.text_prompt(body.prompt))
        return await self._serve(request, body, prompt, chat=False)

    # ----------------------------------------------------------------- helpers

    async def _parse(
        self, request: web.Request, kind: type[BaseModel], model: str | None = None
    ) -> BaseModel:
        try:
            raw = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON", "invalid_request_error") from None
        try:
            body = kind.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(
                400, f"{param}: {first['msg']}", "invalid_request_error", "invalid_value", param
            ) from None
        served = model or self.model_name
        if getattr(body, "model", None) != served:
            raise ApiError(
                404,
                f"model {getattr(body, 'model', None)!r} is not served here (try {served!r})",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        return body

    @staticmethod
    def _run(fn: Any) -> list[int]:
        try:
            return list(fn())
        except EngineError as exc:
            raise _engine_error(exc) from None

    async def _events(
        self, prompt: list[int], params: SamplingParams, keep: Keep | None = None
    ) -> AsyncIterator[TokenChunk | Finished]:
        text: list[str] = []
        ids: list[int] = []
        try:
            async for event in self.engine.generate(prompt, params):
                if isinstance(event, Finished):
                    self.metrics.observe(event)
                    reason, limit = event.finish_reason, params.max_tokens
                    if keep is not None and (reason == "stop" or len(ids) == limit):
                        await keep("".join(text), ids, None if reason == "stop" else limit)
                else:
                    text.append(event.text)
                    ids.extend(event.token_ids)
                yield event
        except EngineError as exc:
            raise _engine_error(exc) from None

    async def _serve(
        self,
        request: web.Request,
        body: _Common,
        prompt: list[int],
        *,
        chat: bool,
        keep: Keep | None = None,
    ) -> web.StreamResponse:
        """Generate and answer; ``keep`` gets an answer that ended by itself (the cache)."""
        params = body.sampling(self.max_tokens_default)
        ident = oai.completion_id(chat)
        events = self._events(prompt, params, keep)
        # Pull the first event before answering, so queue-full and context errors still get
        # a proper status code rather than a broken stream.
        first = await anext(events)
        if body.stream:
            return await self._stream(request, ident, body, first, events, chat=chat)
        text = ""
        event: TokenChunk | Finished = first
        try:
            while not isinstance(event, Finished):
                if _client_gone(request):
                    self.metrics.errors.labels("client_disconnected").inc()
                    return web.Response(status=499)
                text += event.text
                event = await anext(events)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return web.json_response(
            oai.response(
                ident, self.model_name, text, event.finish_reason, _usage(event), chat=chat
            )
        )

    async def _stream(
        self,
        request: web.Request,
        ident: str,
        body: _Common,
        first: TokenChunk | Finished,
        events: AsyncIterator[TokenChunk | Finished],
        *,
        chat: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())
        model = self.model_name

        async def send(data: dict[str, Any] | str) -> None:
            await response.write(oai.sse(data))

        def chunk(**kw: Any) -> dict[str, Any]:
            return oai.chunk(ident, model, created, with_usage=body.include_usage, chat=chat, **kw)

        try:
            if chat:
                await send(chunk(text="", role=True))
            event = first
            while not isinstance(event, Finished):
                if _client_gone(request):
                    raise ConnectionResetError
                await send(chunk(text=event.text))
                event = await anext(events)
            await send(chunk(text=None if chat else "", reason=event.finish_reason))
            if body.include_usage:
                await send(oai.usage_chunk(ident, model, created, _usage(event), chat=chat))
            await send("[DONE]")
        except (ConnectionResetError, ConnectionError):
            self.metrics.errors.labels("client_disconnected").inc()
        except ApiError as exc:  # failed mid-stream: tell the client in-band, as OpenAI does
            await send(oai.error_body(str(exc), exc.type, exc.code))
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # cancels generation if unfinished
        return response
