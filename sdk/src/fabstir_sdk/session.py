"""A paid session, client side: chat over one libp2p stream, paying as tokens arrive.

The session signer (an ephemeral key made per session, named on-chain at ``open``) signs a
voucher for the cumulative billable tokens every ``voucher_every`` tokens and at the end of
each answer, so the host is never more than its credit window ahead and the wallet never
prompts. ``close`` lets the host settle; ``refund`` recovers the deposit from a vanished host.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import cbor2
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import Voucher, VoucherDomain, sign_voucher
from fabstir_sdk.contracts.client import Contracts, SessionStatus, Settlement
from fabstir_sdk.errors import HostError
from fabstir_sdk.protocol import (
    Cancel,
    Done,
    Error,
    FramedStream,
    Prompt,
    ProtocolError,
    Token,
    UnexpectedMessage,
    Usage,
    VoucherMsg,
)

TOKEN_TIMEOUT_S = 60.0


class ChatStream:
    """The answer as an async iterator of text pieces; ``usage`` and ``finish_reason`` are
    set once it is exhausted."""

    def __init__(self, session: Session, prompt: Prompt) -> None:
        self._session = session
        self._prompt = prompt
        self.text = ""
        self.token_ids: list[int] = []  # behind ``text``: lets another host continue it
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def _run(self) -> AsyncIterator[str]:
        async for piece in self._session._stream(self._prompt, self):
            self.text += piece
            yield piece

    async def collect(self) -> str:
        async for _ in self:
            pass
        return self.text


class Session:
    def __init__(
        self,
        *,
        session_id: int,
        host: str,
        peer_id: str,
        model: bytes,
        deposit: int,
        price: int,
        max_tokens: int,
        credit_window: int,
        signer: LocalAccount,
        domain: VoucherDomain,
        framed: FramedStream,
        contracts: Contracts,
        voucher_every: int = 8,
    ) -> None:
        self.id = session_id
        self.host = host
        self.peer_id = peer_id
        self.model = model
        self.deposit = deposit
        self.price = price
        self.max_tokens = max_tokens
        self.credit_window = credit_window
        self.signer = signer
        self.domain = domain
        self.contracts = contracts
        self.voucher_every = max(1, min(voucher_every, credit_window // 2 or 1))
        self._framed = framed
        self.billed = 0  # cumulative billable tokens the host reported
        self.vouched = 0
        self.transcript = bytes(32)
        self.last_voucher: Voucher | None = None
        self._busy = False
        self.closed = False
        self.stall_timeout = TOKEN_TIMEOUT_S  # silence this long mid-answer = the host is gone

    # ----------------------------------------------------------------- chat

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        prefix_ids: Sequence[int] = (),
    ) -> ChatStream:
        """Ask for an answer; ``prefix_ids`` continues one another host began."""
        prompt = Prompt(
            [dict(m) for m in messages],
            max_tokens,
            temperature,
            top_p,
            seed,
            list(stop),
            list(prefix_ids),
        )
        prompt.validate()
        return ChatStream(self, prompt)

    async def _stream(self, prompt: Prompt, out: ChatStream) -> AsyncIterator[str]:
        if self.closed:
            raise HostError("session_closed", "this session is closed")
        if self._busy:
            raise HostError("busy", "one answer at a time per session")
        self._busy = True
        try:
            self._absorb(cbor2.dumps(prompt.messages, canonical=True))
            await self._framed.send(prompt)
            while True:
                message = await self._receive()
                if isinstance(message, Token):
                    self._account(message.tokens)
                    self._absorb(message.text.encode())
                    out.token_ids += message.ids
                    if self.billed - self.vouched >= self.voucher_every:
                        await self._vouch()
                    if message.text:
                        yield message.text
                elif isinstance(message, Done):
                    self._account(message.tokens)
                    out.usage = Usage(message.prompt_tokens, message.completion_tokens)
                    out.finish_reason = message.finish_reason
                    await self._vouch()
                    return
                elif isinstance(message, Error):
                    if self.billed > self.vouched:
                        await self._vouch()
                    raise HostError(message.code, message.message, message.retryable)
                else:
                    raise UnexpectedMessage(f"host sent {message.TYPE} during an answer")
        finally:
            self._busy = False

    async def _receive(self) -> Any:
        try:
            return await self._framed.receive(timeout=self.stall_timeout)
        except ProtocolError as exc:
            raise HostError(exc.code, f"the host went away: {exc}", True) from exc

    def _account(self, cumulative: int) -> None:
        if cumulative < self.billed or cumulative > self.max_tokens:
            raise HostError(
                "bad_accounting",
                f"host reported {cumulative} billable tokens "
                f"after {self.billed} (deposit covers {self.max_tokens})",
            )
        self.billed = cumulative

    def _absorb(self, data: bytes) -> None:
        self.transcript = keccak(self.transcript + data)

    async def _vouch(self) -> None:
        if self.billed <= self.vouched:
            return
        voucher = sign_voucher(self.signer, self.domain, self.id, self.billed, self.transcript)
        await self._framed.send(
            VoucherMsg(voucher.cumulative_tokens, voucher.transcript_hash, voucher.signature)
        )
        self.vouched = self.billed
        self.last_voucher = voucher

    async def cancel(self) -> None:
        """Ask the host to stop the current answer; it ends with finish reason ``cancelled``."""
        await self._framed.send(Cancel())

    # ----------------------------------------------------------------- ending

    async def close(self, wait_settlement: float = 0) -> Settlement | None:
        """End the session: the host settles with our last voucher. Optionally wait (seconds)
        for the settlement and return it."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                await self._framed.stream.close()
        if wait_settlement <= 0:
            return None
        deadline = asyncio.get_running_loop().time() + wait_settlement
        while asyncio.get_running_loop().time() < deadline:
            onchain = await asyncio.to_thread(self.contracts.session, self.id)
            if onchain.status == SessionStatus.SETTLED:
                return await asyncio.to_thread(self.contracts.settlement_of, self.id)
            await asyncio.sleep(0.2)
        return None

    async def request_refund(self) -> int:
        """The host vanished: ask to close on-chain. Returns when ``finalize`` becomes possible
        (a unix time); the host may still settle with our vouchers until then."""
        with contextlib.suppress(Exception):
            await self._framed.stream.reset()
        self.closed = True
        await asyncio.to_thread(self.contracts.request_close, self.id)
        return await asyncio.to_thread(self.contracts.finalizable_at, self.id)

    async def finalize(self) -> Settlement:
        """After the dispute window: settle on the best checkpoint and take the refund."""
        return await asyncio.to_thread(self.contracts.finalize, self.id)
