"""A local OpenAI-compatible gateway that pays Fabstir hosts: point any OpenAI client at it.

One paid session per model is opened on first use and reused; requests to a model are served
one at a time over its session. If a host dies or stalls, even mid-answer, the answer fails
over to the next host (:mod:`fabstir_sdk.failover`); ``usage`` in every response is exactly
what the hosts billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fabstir_sdk import openai_format as oai
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.errors import FabstirError, HostError, NoHostAvailable, UsageError
from fabstir_sdk.failover import FailoverChat
from fabstir_sdk.models import CATALOG
from fabstir_sdk.protocol import InvalidMessage
from fabstir_sdk.session import Session

DEFAULT_MAX_TOKENS = 256
#: Models with a session at once; the least recently used idle one is closed for a new one.
MAX_SLOTS = 16


@dataclass
class _Slot:
    session: Session | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PayingProxy:
    def __init__(self, client: FabstirClient, deposit: int, max_price: int | None = None) -> None:
        self.client = client
        self.deposit = deposit
        self.max_price = max_price
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._retiring: set[asyncio.Task[None]] = set()
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.add_routes(
            [web.get("/v1/models", self.models), web.post("/v1/chat/completions", self.chat)]
        )
        self.app.on_cleanup.append(self._close_sessions)

    def _slot(self, model: str) -> _Slot | None:
        """The slot of ``model``, made if needed; None when :data:`MAX_SLOTS` are all busy."""
        slot = self._slots.get(model)
        if slot is not None:
            self._slots.move_to_end(model)
            return slot
        if len(self._slots) >= MAX_SLOTS:
            idle = next((m for m, s in self._slots.items() if not s.lock.locked()), None)
            if idle is None:
                return None
            retired = self._slots.pop(idle)
            if retired.session is not None:  # it settles what it was paid for
                task = asyncio.ensure_future(_close_quietly(retired.session))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        slot = self._slots[model] = _Slot()
        return slot

    async def _close_sessions(self, _app: web.Application) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for slot in self._slots.values():
            if slot.session is not None:
                with contextlib.suppress(Exception):
                    await slot.session.close()

    async def models(self, _request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "fabstir"} for name in CATALOG
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            model = str(body["model"])
            messages = [
                {"role": str(m["role"]), "content": _text(m.get("content"))}
                for m in body["messages"]
            ]
            stop = body.get("stop")
            params = {
                "temperature": float(body.get("temperature", 1.0)),
                "top_p": float(body.get("top_p", 1.0)),
                "seed": body.get("seed"),
                "stop": [stop] if isinstance(stop, str) else list(stop or []),
                **oai.cache_options(body),
            }
            max_tokens = int(
                body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
            )
        except (ValueError, KeyError, TypeError) as exc:
            reason = str(exc) if oai.EXTENSION in str(exc) else "the body needs model and messages"
            return _error(400, reason, "invalid_request_error")
        slot = self._slot(model)
        if slot is None:
            return _error(
                429, f"{MAX_SLOTS} models are answering already", "rate_limit_exceeded", "busy"
            )
        async with slot.lock:
            if slot.session is not None and slot.session.closed:
                slot.session = None
            answer = self.client.chat(
                model,
                messages,
                session=slot.session,
                deposit=self.deposit,
                max_price=self.max_price,
                max_tokens=max_tokens,
                **params,
            )
            iterator = answer.__aiter__()
            try:
                first = await anext(iterator, None)
            except FabstirError as exc:
                return _error_for(exc)
            finally:
                slot.session = answer.session  # reuse it (failover may have replaced it)
            if body.get("stream"):
                response = await self._stream(request, model, body, answer, first, iterator)
            else:
                try:
                    text = (first or "") + "".join([p async for p in iterator])
                except FabstirError as exc:
                    slot.session = answer.session
                    return _error_for(exc)
                response = web.json_response(
                    oai.response(
                        oai.completion_id(),
                        model,
                        text,
                        answer.finish_reason or "stop",
                        _usage(answer),
                    )
                    | _mark(answer)
                )
            slot.session = answer.session
            return response

    async def _stream(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        answer: FailoverChat,
        first: str | None,
        iterator: Any,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ident, created = oai.completion_id(), int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def send(**kw: Any) -> None:
            data = oai.chunk(ident, model, created, with_usage=include_usage, **kw)
            await response.write(oai.sse(data | _mark(answer)))

        await send(text="", role=True)
        try:
            piece = first
            while piece is not None:
                await send(text=piece)
                piece = await anext(iterator, None)
            await send(reason=answer.finish_reason or "stop")
            if include_usage:
                await response.write(
                    oai.sse(oai.usage_chunk(ident, model, created, _usage(answer)))
                )
            await response.write(oai.sse("[DONE]"))
        except FabstirError as exc:  # every host failed mid-answer: say so in-band, as OpenAI does
            code = exc.code if isinstance(exc, HostError) else type(exc).__name__
            await response.write(oai.sse(oai.error_body(str(exc), "server_error", code)))
        finally:
            # The HTTP client may have gone: stop the host, pay for what it sent, keep the
            # session usable for the next request.
            await answer.aclose()
        return response


async def _close_quietly(session: Session) -> None:
    with contextlib.suppress(Exception):
        await session.close()


def _mark(answer: FailoverChat) -> dict[str, Any]:
    hit = answer.cache_hit
    return oai.cache_mark(hit.similarity, hit.entry) if hit is not None else {}


def _usage(answer: FailoverChat) -> dict[str, int]:
    if answer.usage is None:
        return oai.usage(0, 0)
    return oai.usage(answer.usage.prompt_tokens, answer.usage.completion_tokens)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _error_for(exc: FabstirError) -> web.Response:
    """The OpenAI-style error reply for a failure before the answer's first byte."""
    if isinstance(exc, NoHostAvailable):
        return _error(503, str(exc), "server_overloaded", "no_host")
    if isinstance(exc, UsageError | InvalidMessage):
        return _error(400, str(exc), "invalid_request_error")
    if isinstance(exc, HostError):
        bad = exc.code in ("invalid_request", "context_length_exceeded")
        return _error(
            400 if bad else 502,
            str(exc),
            "invalid_request_error" if bad else "server_error",
            exc.code,
        )
    return _error(502, str(exc), "server_error", type(exc).__name__)


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response(oai.error_body(message, type_, code), status=status)
