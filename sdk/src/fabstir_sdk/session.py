"""A paid session, client side: chat over one libp2p stream, paying as tokens arrive.

The session signer (an ephemeral key made per session, named on-chain at ``open``) signs a
voucher for the cumulative billable tokens every ``voucher_every`` tokens and at the end of
each answer, so the host is never more than its credit window ahead and the wallet never
prompts. ``close`` lets the host settle; ``refund`` recovers the deposit from a vanished host.

The client signs only what it counts itself: prompt tokens with the model's own tokenizer
(pinned in the ModelRegistry, see :mod:`fabstir_sdk.tokenizer`), completion tokens from the
token ids each ``token`` frame carries. A host that claims more gets no voucher for the
excess, and the session ends with ``bad_accounting``.

Leaving an answer early sends ``cancel``, drains to the host's ``done`` and vouches for what
was delivered, so the next ``chat`` works: at once for ``aclose()`` and a cancelled task; for a
``break``, when the answer is dropped, or at the next ``chat`` or ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, NoReturn

from eth_account.signers.local import LocalAccount

from fabstir_sdk.audit import AuditReport
from fabstir_sdk.contracts import Voucher, VoucherDomain, sign_voucher
from fabstir_sdk.contracts.client import Contracts, SessionStatus, Settlement
from fabstir_sdk.errors import HostError, UsageError, mapped
from fabstir_sdk.p2p import P2PError
from fabstir_sdk.protocol import (
    AuditRequest,
    AuditVerdict,
    CacheHit,
    Cancel,
    Done,
    Error,
    FramedStream,
    Message,
    Prompt,
    ProtocolError,
    Token,
    Usage,
    VoucherMsg,
    cached_tokens,
)
from fabstir_sdk.tokenizer import Tokenizer, TokenizerError
from fabstir_sdk.transcripts import (
    ZERO_HASH,
    SignedTranscript,
    TranscriptRecord,
    audit_commitment,
    sampling_of,
    served_from_cache,
    with_answer,
)

log = logging.getLogger(__name__)

TOKEN_TIMEOUT_S = 60.0


class ChatStream:
    """The answer as an async iterator of text pieces; ``usage`` and ``finish_reason`` are
    set once it is exhausted. ``aclose()`` (or ``break`` and a next ``chat``) stops it early."""

    def __init__(self, session: Session, prompt: Prompt, prompt_ids: list[int]) -> None:
        self._session = session
        self._prompt = prompt
        self.prompt_ids = prompt_ids  # tokenized by us, with the pinned tokenizer
        self.prompt_tokens = len(prompt_ids)
        self.text = ""
        self.token_ids: list[int] = []  # behind ``text``: lets another host continue it
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.cache_hit: CacheHit | None = None  # set when the host served it from its cache
        self.billed_tokens: int | None = None  # what the answer cost, once it is complete
        self.transcript: SignedTranscript | None = None  # the host-signed record, once complete
        self._gen: AsyncGenerator[str, None] | None = None
        self._reader: asyncio.Task[Any] | None = None  # the task reading it

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        if self._gen is None:
            self._gen = self._session._stream(self._prompt, self)
        self._reader = asyncio.current_task()
        piece = await self._gen.__anext__()
        self.text += piece
        return piece

    async def aclose(self) -> None:
        """Stop the answer: the host is told to cancel, and what it delivered is paid for."""
        if self._gen is not None:
            await self._gen.aclose()

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
        model_sha256: bytes,
        deposit: int,
        price: int,
        max_tokens: int,
        credit_window: int,
        signer: LocalAccount,
        domain: VoucherDomain,
        framed: FramedStream,
        contracts: Contracts,
        tokenizer: Tokenizer,
        voucher_every: int = 8,
        cache_rate_bps: int = 0,
    ) -> None:
        self.id = session_id
        self.host = host
        self.peer_id = peer_id
        self.model = model
        self.model_sha256 = model_sha256
        self.deposit = deposit
        self.price = price
        self.max_tokens = max_tokens
        self.credit_window = credit_window
        self.signer = signer
        self.domain = domain
        self.contracts = contracts
        self.tokenizer = tokenizer
        self.voucher_every = max(1, min(voucher_every, credit_window // 2 or 1))
        self.cache_rate_bps = cache_rate_bps  # the host's terms for cached answers (``ready``)
        self._framed = framed
        self.billed = 0  # cumulative billable tokens, as we count them
        self.vouched = 0
        self.transcript = ZERO_HASH  # of the last voucher: what the next answer chains to
        self.last_voucher: Voucher | None = None
        self._turn = asyncio.Lock()  # one answer at a time, including its wind-down
        self._current: ChatStream | None = None
        self.closed = False
        self.stall_timeout = TOKEN_TIMEOUT_S  # silence this long mid-answer = the host is gone
        self.transcripts: list[SignedTranscript] = []  # every complete answer, host-signed
        self.on_transcript: Callable[[SignedTranscript], None] | None = None  # e.g. audits

    def resume_from(self, voucher: Voucher | None) -> None:
        """Continue from ``voucher`` (our own signature, which the host held on to)."""
        if voucher is not None:
            self.billed = self.vouched = voucher.cumulative_tokens
            self.transcript = voucher.transcript_hash
            self.last_voucher = voucher

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
        cache: str = "off",
        cache_min_similarity: float | None = None,
        cache_sampled: bool = False,
        cache_share: bool = False,
    ) -> ChatStream:
        """Ask for an answer; ``prefix_ids`` continues one another host began.

        ``cache`` lets the host answer from its cache (``own``: our earlier answers only;
        ``shared``: also those other clients shared), billed at its cache rate; a hit sets
        the stream's ``cache_hit``. ``cache_share`` lets this answer serve other clients."""
        prompt = Prompt(
            [dict(m) for m in messages],
            max_tokens,
            temperature,
            top_p,
            seed,
            list(stop),
            list(prefix_ids),
            cache,
            cache_min_similarity,
            cache_sampled,
            cache_share,
        )
        try:
            prompt.validate()
            if any(i >= self.tokenizer.n_vocab for i in prompt.prefix_ids):
                raise UsageError("prefix_ids outside the model's vocabulary")
            ids = self.tokenizer.chat_tokens(prompt.messages) + list(prompt.prefix_ids)
        except (ProtocolError, TokenizerError) as exc:
            raise UsageError(str(exc)) from exc
        return ChatStream(self, prompt, ids)

    async def _take_turn(self, out: ChatStream | None = None) -> None:
        """Make the session ours (an answer or an audit): an answer left early and never
        closed is wound down first; one another task is still reading makes this ``busy``."""
        previous = self._current
        if previous is not None and previous is not out:
            reader = previous._reader
            if reader is not None and reader is not asyncio.current_task() and not reader.done():
                raise HostError("busy", "another task is reading an answer on this session")
            with contextlib.suppress(RuntimeError):  # already closing in another task
                await previous.aclose()  # left early and never closed: wind it down first
        await self._turn.acquire()
        if self.closed:
            self._turn.release()
            raise HostError("session_closed", "this session is closed")

    async def _stream(self, prompt: Prompt, out: ChatStream) -> AsyncGenerator[str, None]:
        await self._take_turn(out)
        self._current = out
        room = self.max_tokens - self.billed - out.prompt_tokens
        record = TranscriptRecord(
            self.id,
            self.billed,
            self.transcript,
            self.model_sha256,
            tuple(out.prompt_ids),
            (),
            "",
            sampling_of(prompt),
        )
        answer = _Answer(self.billed, out, min(prompt.max_tokens or room, room), record)
        ended = False
        try:
            await self._send(prompt)
            while True:
                message = await self._receive()
                if isinstance(message, Done):
                    await self._finish(answer, message)
                    ended = True
                    return
                if isinstance(message, Error):
                    ended = True
                    await self._vouch(answer)
                    raise HostError(message.code, message.message, message.retryable)
                if isinstance(message, CacheHit):
                    await self._on_cache_hit(answer, prompt, message)
                    continue
                piece = await self._on_token(answer, message)
                if piece:
                    yield piece
        except HostError:
            ended = True
            raise
        finally:
            if ended or self.closed:
                self._release(out)
            else:
                # Left early: the wind-down owns the turn until the host says done.
                await asyncio.shield(asyncio.ensure_future(self._wind_down(answer)))

    async def _on_token(self, answer: _Answer, message: Any) -> str:
        if not isinstance(message, Token):
            await self._bad_accounting(answer, f"host sent {message.TYPE} during an answer")
        if any(i >= self.tokenizer.n_vocab for i in message.ids):
            await self._bad_accounting(answer, "host sent token ids outside the vocabulary")
        if len(answer.out.token_ids) + len(message.ids) > answer.limit:
            await self._bad_accounting(
                answer, f"host sent more than the {answer.limit} completion tokens asked for"
            )
        answer.out.token_ids += message.ids
        if answer.cancelled_at is not None:
            beyond = len(answer.out.token_ids) - answer.cancelled_at
            if beyond > self.credit_window + self.voucher_every:  # what was in flight
                await self._bad_accounting(answer, f"host sent {beyond} tokens after cancel")
        answer.check(message.tokens)
        if answer.over is not None:
            await self._bad_accounting(answer, answer.over)
        self.billed = answer.expected
        answer.text += message.text
        if self.billed - self.vouched >= self.voucher_every and answer.cancelled_at is None:
            await self._vouch(answer)  # (after a cancel only ``done`` is paid: no credit to run on)
        return str(message.text)

    async def _on_cache_hit(self, answer: _Answer, prompt: Prompt, hit: CacheHit) -> None:
        """The host answers from its cache: only if we asked, before any token, at the rate
        it announced; the rest of the answer is then billed by :func:`cached_tokens`."""
        refused = (
            "host served a cached answer we did not ask for"
            if prompt.cache == "off" or (prompt.temperature > 0 and not prompt.cache_sampled)
            else "host announced a cache hit in the middle of an answer"
            if answer.out.token_ids or answer.rate is not None
            else f"host bills its cache at {hit.rate_bps} bps, not the {self.cache_rate_bps} "
            "it offered"
            if hit.rate_bps != self.cache_rate_bps
            else None
        )
        if refused is not None:
            await self._bad_accounting(answer, refused)
        answer.rate = hit.rate_bps
        answer.record = dataclasses.replace(
            answer.record, sampling=served_from_cache(answer.record.sampling, hit)
        )
        answer.out.cache_hit = hit

    async def _finish(self, answer: _Answer, done: Done) -> None:
        out = answer.out
        answer.check(done.tokens)
        if answer.over is None and (
            done.prompt_tokens != out.prompt_tokens or done.completion_tokens != len(out.token_ids)
        ):
            answer.over = (
                f"host reported usage {done.prompt_tokens}+{done.completion_tokens}, we "
                f"counted {out.prompt_tokens}+{len(out.token_ids)}"
            )
        if answer.over is not None:
            await self._bad_accounting(answer, answer.over)
        self.billed = answer.expected
        out.usage = Usage(out.prompt_tokens, len(out.token_ids))
        out.billed_tokens = answer.expected - answer.start
        out.finish_reason = done.finish_reason
        await self._vouch(answer, done.finish_reason)
        record = with_answer(answer.record, out.token_ids, answer.text, done.finish_reason)
        signed = SignedTranscript(record, done.signature or b"")
        signer = signed.signer(self.domain) if done.signature else None
        if signer is None or signer.lower() != self.host.lower():
            # Paid for (we counted it), but a host that will not stand behind its answer
            # cannot be audited: we stop using it.
            await self._abandon()
            raise HostError(
                "unsigned_transcript",
                f"the host did not sign the answer it served (signed by {signer})",
                retryable=True,
            )
        out.transcript = signed
        self.transcripts.append(signed)
        if self.on_transcript is not None:
            self.on_transcript(signed)

    async def _wind_down(self, answer: _Answer) -> None:
        """Cancel the answer in progress and read to its ``done``, paying for what came."""
        answer.cancelled_at = len(answer.out.token_ids)
        try:
            async with asyncio.timeout(self.stall_timeout):
                await self._send(Cancel())
                while True:
                    message = await self._receive()
                    if isinstance(message, Done):
                        await self._finish(answer, message)
                        return
                    if isinstance(message, Error):  # the answer ended; the session goes on
                        await self._vouch(answer)
                        return
                    await self._on_token(answer, message)
        except Exception as exc:  # nobody is listening for this answer any more
            log.info("session %s: could not end the answer cleanly: %s", self.id, exc)
            await self._abandon()
        finally:
            self._release(answer.out)

    def _release(self, out: ChatStream) -> None:
        if self._current is out:
            self._current = None
        if self._turn.locked():
            self._turn.release()

    async def _bad_accounting(self, answer: _Answer, reason: str) -> NoReturn:
        """The host over-claimed: pay what we counted, no more, and end the session."""
        self.billed = max(self.vouched, min(answer.expected, answer.claimed))
        with contextlib.suppress(Exception):
            await self._vouch(answer)
        with contextlib.suppress(Exception):
            await self._send(Error("bad_accounting", reason))
        await self._abandon()
        raise HostError("bad_accounting", reason, retryable=True)

    async def _abandon(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self._framed.stream.close()

    async def _send(self, message: Message) -> None:
        try:
            await self._framed.send(message)
        except (ConnectionError, OSError, P2PError) as exc:
            raise HostError("stream_closed", f"the host went away: {exc}", True) from exc

    async def _receive(self) -> Any:
        try:
            return await self._framed.receive(timeout=self.stall_timeout)
        except ProtocolError as exc:
            raise HostError(exc.code, f"the host went away: {exc}", True) from exc

    async def _vouch(self, answer: _Answer, finish: str | None = None) -> None:
        """Pay for what we counted, committing to the answer as it stands
        (:mod:`fabstir_sdk.transcripts`)."""
        ids = answer.out.token_ids
        await self._pay(with_answer(answer.record, ids, answer.text, finish).commitment())

    async def _pay(self, committed: bytes) -> None:
        """Vouch for ``billed`` tokens, committing to ``committed``."""
        if self.billed <= self.vouched:
            return
        voucher = sign_voucher(self.signer, self.domain, self.id, self.billed, committed)
        await self._send(
            VoucherMsg(voucher.cumulative_tokens, voucher.transcript_hash, voucher.signature)
        )
        self.vouched = self.billed
        self.last_voucher = voucher
        self.transcript = committed

    # ----------------------------------------------------------------- audits

    @mapped
    async def audit(self, transcript: SignedTranscript | TranscriptRecord) -> AuditReport:
        """Have this session's host re-run an answer (another host's) on its model and judge
        it; billed like a prompt of the answer's prompt + completion tokens, which we count."""
        record = transcript.record if isinstance(transcript, SignedTranscript) else transcript
        if record.model_sha256 != self.model_sha256:
            raise UsageError("the answer is of another model than this session's")
        expected = self.billed + record.audit_tokens
        if expected > self.max_tokens:
            raise UsageError("the session's deposit does not cover this audit")
        await self._take_turn()
        try:
            started = time.perf_counter()
            await self._send(AuditRequest(record.encode()))
            verdict = await self._receive()
            if isinstance(verdict, Error):
                raise HostError(verdict.code, verdict.message, verdict.retryable)
            if not isinstance(verdict, AuditVerdict):
                await self._abandon()
                raise HostError("unexpected_message", f"an audit answered with {verdict.TYPE}")
            if verdict.transcript_hash != record.commitment():  # not our audit: not paid
                await self._abandon()
                raise HostError("bad_verdict", "the verdict is about another transcript")
            self.billed = max(self.vouched, min(expected, verdict.tokens))
            await self._pay(audit_commitment(self.transcript, verdict))
            if verdict.tokens != expected:
                await self._abandon()
                raise HostError(
                    "bad_accounting",
                    f"host claims {verdict.tokens} billable tokens, we count {expected}",
                    retryable=True,
                )
            return AuditReport(
                verdict.transcript_hash,
                verdict.mode,
                verdict.checked,
                verdict.agreed,
                verdict.outside,
                verdict.passed,
                f"{verdict.reason} (host {self.host})",
                time.perf_counter() - started,
                verdict.z_score,
            )
        finally:
            self._turn.release()

    async def cancel(self) -> None:
        """Ask the host to stop the current answer; it ends with finish reason ``cancelled``."""
        await self._send(Cancel())

    # ----------------------------------------------------------------- ending

    @mapped
    async def close(self, wait_settlement: float = 0) -> Settlement | None:
        """End the session: the host settles with our last voucher. Optionally wait (seconds)
        for the settlement and return it."""
        if self._current is not None:
            with contextlib.suppress(Exception):
                await self._current.aclose()
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

    @mapped
    async def request_refund(self) -> int:
        """The host vanished: ask to close on-chain. Returns when ``finalize`` becomes possible
        (a unix time); the host may still settle with our vouchers until then."""
        with contextlib.suppress(Exception):
            await self._framed.stream.reset()
        self.closed = True
        await asyncio.to_thread(self.contracts.request_close, self.id)
        return await asyncio.to_thread(self.contracts.finalizable_at, self.id)

    @mapped
    async def finalize(self) -> Settlement:
        """After the dispute window: settle on the best checkpoint and take the refund."""
        return await asyncio.to_thread(self.contracts.finalize, self.id)


class _Answer:
    """What one answer may bill: ``start`` (vouched before it) + our prompt count + the ids
    received. ``check`` compares each claim of the host with it."""

    def __init__(self, start: int, out: ChatStream, limit: int, record: TranscriptRecord) -> None:
        self.start = start
        self.out = out
        self.limit = limit  # completion tokens asked for (and paid for by the deposit)
        self.record = record  # what the vouchers commit to, completed as tokens arrive
        self.text = ""
        self.claimed = start
        self.over: str | None = None
        self.cancelled_at: int | None = None  # ids received when we sent ``cancel``
        self.rate: int | None = None  # the cache rate, for an answer from the host's cache

    @property
    def expected(self) -> int:
        prompt, completion = self.out.prompt_tokens, len(self.out.token_ids)
        if self.rate is not None:
            return self.start + cached_tokens(prompt, completion, self.rate)
        return self.start + prompt + completion

    def check(self, claimed: int) -> None:
        self.claimed = claimed
        if claimed != self.expected and self.over is None:
            self.over = (
                f"host claims {claimed} billable tokens, we count {self.expected} "
                f"({self.start} before this answer + {self.out.prompt_tokens} prompt + "
                f"{len(self.out.token_ids)} received)"
            )
