"""A local OpenAI-compatible gateway that pays Fabstir hosts: point any OpenAI client at it.

One paid session per model is opened on first use and reused; requests to a model are served
one at a time over its session. If a host fails before the first token of an answer, the
proxy opens a session with the next host and retries; ``usage`` in every response is exactly
what the host billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fabstir_sdk import openai_format as oai
from fabstir_sdk.client import FabstirClient, NoHostAvailable
from fabstir_sdk.models import CATALOG
from fabstir_sdk.protocol import InvalidMessage
from fabstir_sdk.session import HostError, Session

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    session: Session | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failed_hosts: set[str] = field(default_factory=set)


class PayingProxy:
    def __init__(self, client: FabstirClient, deposit: int, max_price: int | None = None) -> None:
        self.client = client
        self.deposit = deposit
        self.max_price = max_price
        self._slots: dict[str, _Slot] = {}
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.add_routes(
            [web.get("/v1/models", self.models), web.post("/v1/chat/completions", self.chat)]
        )
        self.app.on_cleanup.append(self._close_sessions)

    async def _close_sessions(self, _app: web.Application) -> None:
        for slot in self._slots.values():
            if slot.session is not None:
                with contextlib.suppress(Exception):
                    await slot.session.close()

    async def models(self, _request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "fabstir"} for name in CATALOG
        ]
        return web.json_response({"object": "list", "data": data})

    async def _session(self, model: str, slot: _Slot) -> Session:
        if slot.session is None or slot.session.closed:
            slot.session = await self.client.open_session(
                model, deposit=self.deposit, max_price=self.max_price, exclude=slot.failed_hosts
            )
        return slot.session

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            model = str(body["model"])
            messages = [
                {"role": str(m["role"]), "content": _text(m.get("content"))}
                for m in body["messages"]
            ]
        except (ValueError, KeyError, TypeError):
            return _error(400, "the body needs model and messages", "invalid_request_error")
        options = {
            "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens"),
            "temperature": float(body.get("temperature", 1.0)),
            "top_p": float(body.get("top_p", 1.0)),
            "seed": body.get("seed"),
            "stop": [body["stop"]]
            if isinstance(body.get("stop"), str)
            else list(body.get("stop") or []),
        }
        slot = self._slots.setdefault(model, _Slot())
        async with slot.lock:
            for _attempt in range(3):
                try:
                    session = await self._session(model, slot)
                    answer = session.chat(messages, **options)
                except NoHostAvailable as exc:
                    return _error(503, str(exc), "server_overloaded", "no_host")
                except InvalidMessage as exc:
                    return _error(400, str(exc), "invalid_request_error")
                except (HostError, OSError) as exc:
                    self._fail(slot, exc)
                    continue
                iterator = answer.__aiter__()
                try:
                    first = await anext(iterator, None)
                except HostError as exc:
                    if exc.code in ("invalid_request", "context_length_exceeded"):
                        return _error(400, str(exc), "invalid_request_error", exc.code)
                    self._fail(slot, exc)  # nothing streamed yet: safe to try another host
                    continue
                if body.get("stream"):
                    return await self._stream(request, model, body, answer, first, iterator)
                text = (first or "") + "".join([p async for p in iterator])
                assert answer.usage is not None
                used = oai.usage(answer.usage.prompt_tokens, answer.usage.completion_tokens)
                return web.json_response(
                    oai.chat_response(
                        oai.completion_id(), model, text, answer.finish_reason or "stop", used
                    )
                )
        return _error(503, "every host tried failed", "server_overloaded", "hosts_failed")

    def _fail(self, slot: _Slot, exc: Exception) -> None:
        log.warning("host failed: %s", exc)
        if slot.session is not None:
            slot.failed_hosts.add(slot.session.host)
            slot.session = None

    async def _stream(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        answer: Any,
        first: str | None,
        iterator: Any,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ident, created = oai.completion_id(), int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await response.write(
            oai.sse(
                oai.chat_chunk(ident, model, created, text="", role=True, with_usage=include_usage)
            )
        )
        try:
            piece = first
            while piece is not None:
                await response.write(
                    oai.sse(
                        oai.chat_chunk(ident, model, created, text=piece, with_usage=include_usage)
                    )
                )
                piece = await anext(iterator, None)
            await response.write(
                oai.sse(
                    oai.chat_chunk(
                        ident,
                        model,
                        created,
                        reason=answer.finish_reason or "stop",
                        with_usage=include_usage,
                    )
                )
            )
            if include_usage and answer.usage is not None:
                used = oai.usage(answer.usage.prompt_tokens, answer.usage.completion_tokens)
                await response.write(oai.sse(oai.usage_chunk(ident, model, created, used)))
            await response.write(oai.sse("[DONE]"))
        except HostError as exc:
            await response.write(oai.sse(oai.error_body(str(exc), "server_error", exc.code)))
        return response


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response(oai.error_body(message, type_, code), status=status)
