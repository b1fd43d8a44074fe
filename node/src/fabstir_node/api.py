"""OpenAI-compatible HTTP API over the engine: chat and text completions (JSON or SSE),
models, health and Prometheus metrics.

Requests and errors follow OpenAI's shapes so that stock OpenAI clients work unchanged: an
error is ``{"error": {"message", "type", "param", "code"}}`` with the matching status code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    Usage,
)
from fabstir_node.metrics import CONTENT_TYPE, NodeMetrics
from fabstir_sdk import openai_format as oai

MAX_BODY = 4 * 1024 * 1024
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
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(p.text for p in self.content or [])
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)

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


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def response(self) -> web.Response:
        body = oai.error_body(str(self), self.type, self.code, self.param)
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return web.json_response(body, status=self.status, headers=headers)


def _engine_error(exc: EngineError) -> ApiError:
    status, type_ = STATUS.get(type(exc), (500, "server_error"))
    return ApiError(status, str(exc), type_, exc.kind)


def _usage(usage: Usage) -> dict[str, int]:
    return oai.usage(usage.prompt_tokens, usage.completion_tokens)


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
    ) -> None:
        """``inference=False`` serves only /health and /metrics: the unpaid OpenAI-compatible
        endpoints are off (``fabstir-node run`` without ``--http``)."""
        self.engine = engine
        self.model_name = model_name
        self.max_tokens_default = max_tokens_default
        self.metrics = metrics or NodeMetrics(lambda: engine.queue_depth)
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
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model_name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "fabstir",
                    }
                ],
            }
        )

    async def health(self, _request: web.Request) -> web.Response:
        if not self.engine.ready:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response(
            {"status": "ok", "model": self.model_name, "queue_depth": self.engine.queue_depth}
        )

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request, ChatRequest)
        assert isinstance(body, ChatRequest)
        prompt = self._run(
            lambda: self.engine.chat_prompt([m.as_template_input() for m in body.messages])
        )
        return await self._serve(request, body, prompt, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request, CompletionRequest)
        assert isinstance(body, CompletionRequest)
        prompt = self._run(lambda: self.engine.text_prompt(body.prompt))
        return await self._serve(request, body, prompt, chat=False)

    # ----------------------------------------------------------------- helpers

    async def _parse(self, request: web.Request, kind: type[_Common]) -> _Common:
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
        if body.model != self.model_name:
            raise ApiError(
                404,
                f"model {body.model!r} is not served here (try {self.model_name!r})",
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
        self, prompt: list[int], params: SamplingParams
    ) -> AsyncIterator[TokenChunk | Finished]:
        try:
            async for event in self.engine.generate(prompt, params):
                if isinstance(event, Finished):
                    self.metrics.observe(event)
                yield event
        except EngineError as exc:
            raise _engine_error(exc) from None

    async def _serve(
        self, request: web.Request, body: _Common, prompt: list[int], *, chat: bool
    ) -> web.StreamResponse:
        params = body.sampling(self.max_tokens_default)
        ident = oai.completion_id(chat)
        events = self._events(prompt, params)
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
                ident, self.model_name, text, event.finish_reason, _usage(event.usage), chat=chat
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
                await send(oai.usage_chunk(ident, model, created, _usage(event.usage), chat=chat))
            await send("[DONE]")
        except (ConnectionResetError, ConnectionError):
            self.metrics.errors.labels("client_disconnected").inc()
        except ApiError as exc:  # failed mid-stream: tell the client in-band, as OpenAI does
            await send(oai.error_body(str(exc), exc.type, exc.code))
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # cancels generation if unfinished
        return response
