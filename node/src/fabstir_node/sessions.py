"""Paid sessions, host side: one libp2p stream per session.

``open`` is checked against the chain (session open, for this host, for a model we serve at a
price we accept); then prompts are answered token by token while vouchers arrive. Each voucher
is verified against the session's signer and journaled before it extends the credit window,
so the host never computes more than ``credit_window`` tokens ahead of what it can claim.
When the client closes the stream, or goes silent, the session is settled on-chain with the
best voucher, exactly once, also across restarts.

Each answer's transcript record (:mod:`fabstir_sdk.transcripts`) is stored, sealed with the
key the client gave at ``open``, together with the voucher that paid for it: as soon as a
voucher covers the whole answer, or with the best one when the stream ends first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fabstir_node.audits import AuditRefused, AuditService
from fabstir_node.cache.keys import RequestKey, Sampling, request_key
from fabstir_node.cache.semantic import CachePolicy, Hit, SemanticCache
from fabstir_node.chain import HostChain, ServedModel, SessionRefused
from fabstir_node.inference import CreditGate, Engine, EngineError, Finished, SamplingParams
from fabstir_node.journal import ABANDONED, OPEN, SETTLED, SETTLING, Journal
from fabstir_node.limits import PeerRateLimiter
from fabstir_sdk.contracts import Voucher, recover_signer
from fabstir_sdk.contracts.client import SessionStatus
from fabstir_sdk.protocol import (
    MAX_FRAME,
    AuditRequest,
    AuditVerdict,
    CacheHit,
    Cancel,
    Done,
    Error,
    FramedStream,
    InfoRequest,
    InfoResponse,
    Message,
    Open,
    Prompt,
    ProtocolError,
    Ready,
    StreamClosed,
    Token,
    UnexpectedMessage,
    VoucherMsg,
    cached_tokens,
)
from fabstir_sdk.storage.layout import result_path
from fabstir_sdk.tasks import TaskSet
from fabstir_sdk.transcripts import (
    ZERO_HASH,
    StoredResult,
    TranscriptRecord,
    sampling_of,
    seal_result,
    served_from_cache,
    with_answer,
)

log = logging.getLogger(__name__)


class InvalidVoucher(ProtocolError):
    code = "invalid_voucher"


class ResultSink(Protocol):
    """Where sealed answers go (the node's content-addressed store)."""

    async def store_result(self, path: str, sealed: bytes) -> None: ...


@dataclass(frozen=True)
class SessionPolicy:
    credit_window: int = 64  # completion tokens generated ahead of the last voucher
    checkpoint_every: int = 2000  # vouched tokens between on-chain checkpoints
    open_timeout: float = 10.0
    idle_timeout: float = 120.0  # a silent client is treated as gone and the session settled
    voucher_timeout: float = 30.0  # how long to wait at the credit window
    max_tokens_default: int = 512
    min_remaining: float = 120.0  # refuse a session that expires sooner than this (seconds)
    expiry_margin: float = 30.0  # stop serving and settle this long before a session expires
    watch_interval: float = 15.0  # how often live sessions are checked for expiry/close requests
    retry_base: float = 5.0  # first delay before a failed settlement is retried (doubles, ≤ 5 min)
    open_rate: float = 2.0  # `open` requests a peer may make per second (each costs a chain RPC)
    open_burst: int = 8  # ... at once
    open_global_rate: float = 50.0  # ... all peers together, per second
    cache_rate_bps: int = 2500  # an answer from the cache bills 25% of its fresh count


@dataclass
class _Live:
    """A session attached to a stream."""

    id: int
    signer: str
    client: str  # the session's client: whose cached answers it may see
    max_tokens: int
    billed: int
    best: int
    checkpointed: int
    prompts: asyncio.Queue[Prompt | AuditRequest] = field(default_factory=asyncio.Queue)
    gate: CreditGate | None = None
    base: int = 0  # billed tokens where the answer in progress starts its completion
    generation: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    failure: ProtocolError | None = None
    expires_at: float = 0.0
    checkpointing: bool = False
    result_key: bytes | None = None  # from `open`: seals the stored answers
    voucher: Voucher | None = None  # the best one
    unsaved: TranscriptRecord | None = None  # the last answer, until it is stored

    @property
    def transcript(self) -> bytes:
        """What the next answer chains to: the best voucher's transcript hash."""
        return self.voucher.transcript_hash if self.voucher else ZERO_HASH

    def end(self, failure: ProtocolError) -> None:
        """Stop serving this stream (expiry, a close request): the session then settles."""
        self.failure = failure
        self.ended.set()
        if self.generation is not None:
            self.generation.cancel()


class SessionService:
    """Serves ``/fabstir/session/1.0.0`` and ``/fabstir/info/1.0.0`` streams."""

    def __init__(
        self,
        engine: Engine,
        chain: HostChain,
        journal: Journal,
        served: ServedModel,
        policy: SessionPolicy | None = None,
        results: ResultSink | None = None,
        cache: SemanticCache | None = None,
        audits: AuditService | None = None,
    ) -> None:
        self.engine = engine
        self.audits = audits
        self.results = results
        self.cache = cache
        self.chain = chain
        self.journal = journal
        self.served = served
        self.policy = policy or SessionPolicy()
        self.domain = chain.contracts.voucher_domain()
        self.tokens_per_second = 0.0
        self._attached: dict[int, _Live] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._settling: dict[int, asyncio.Task[None]] = {}
        self._background = TaskSet()
        self._watcher: asyncio.Task[None] | None = None
        self.open_limiter = PeerRateLimiter(
            self.policy.open_rate,
            self.policy.open_burst,
            self.policy.open_global_rate,
            self.policy.open_global_rate,
        )

    # ----------------------------------------------------------------- streams

    async def handle_session(self, framed: FramedStream) -> None:
        """Serve one session stream; never raises (a handler error must not reach libp2p)."""
        attached: list[int] = []  # the session this stream attached to, once it did
        try:
            await self._serve(framed, attached)
        except ProtocolError as exc:
            if not isinstance(exc, StreamClosed):
                await framed.fail(exc)
        except Exception as exc:  # a bug must cost one stream, not the node
            log.exception("session stream failed")
            await framed.fail(
                SessionRefused(
                    "internal_error", f"host error: {type(exc).__name__}", retryable=True
                )
            )
        finally:
            with contextlib.suppress(Exception):
                await framed.stream.close()
            for session_id in attached:
                live = self._attached.pop(session_id, None)
                if live is not None:
                    self._save_result(live)
                self.settle_soon(session_id)

    async def handle_info(self, framed: FramedStream) -> None:
        await self._answer_one(framed, InfoRequest, lambda _: [self.info()])

    async def _answer_one(
        self,
        framed: FramedStream,
        kind: type[Message],
        replies: Callable[[Message], Iterable[Message]],
    ) -> None:
        """A free request-response protocol: one ``kind`` request, the frames of ``replies``."""
        try:
            request = await framed.receive(timeout=self.policy.open_timeout)
            if not isinstance(request, kind):
                raise UnexpectedMessage(f"expected {kind.TYPE}, got {request.TYPE}")
            for reply in replies(request):
                await framed.send(reply)
        except ProtocolError as exc:
            await framed.fail(exc)
        except Exception:
            log.exception("%s stream failed", kind.TYPE)
        finally:
            with contextlib.suppress(Exception):
                await framed.stream.close()

    def info(self) -> InfoResponse:
        model = {
            "name": self.served.name,
            "model_id": self.served.model_id,
            "prices": dict(self.served.prices),
        }
        return InfoResponse(
            self.chain.address,
            [model],
            self.engine.queue_depth,
            round(self.tokens_per_second, 2),
            capacity=self.engine.capacity,
            parallel=self.engine.parallel,
            gpu_layers=self.engine.gpu_layers,
        )

    async def _serve(self, framed: FramedStream, attached: list[int]) -> None:
        first = await framed.receive(timeout=self.policy.open_timeout)
        if not isinstance(first, Open):
            raise UnexpectedMessage(f"the first message must be open, not {first.TYPE}")
        if not self.open_limiter.allow(framed.remote_peer):  # before the chain RPC
            raise SessionRefused("rate_limited", "too many open requests: retry shortly", True)
        onchain = await self.chain.verify_session(first.session_id, first.chain_id, self.served)
        framed.max_frame = MAX_FRAME  # a paid session for us: prompts may be large now
        if first.session_id in self._attached:
            raise SessionRefused("session_busy", "this session is already attached to a stream")
        remaining = onchain.expires_at - await self.chain.now()
        if remaining < self.policy.min_remaining:
            raise SessionRefused(
                "session_expiring",
                f"session {onchain.id} expires in {max(remaining, 0):.0f} s: open a new one",
            )
        journaled = self.journal.open_session(
            onchain.id,
            onchain.client,
            onchain.signer,
            self.served.name,
            onchain.deposit,
            onchain.price,
            onchain.max_tokens,
        )
        if journaled.state != OPEN:
            raise SessionRefused("session_closed", f"session {onchain.id} is {journaled.state}")
        # A stream only ever bills on top of what the client has vouched for: tokens a broken
        # stream delivered without a voucher are the host's loss (at most a credit window).
        best = journaled.best
        vouched = best.cumulative_tokens if best else 0
        live = _Live(
            onchain.id,
            onchain.signer,
            onchain.client.lower(),
            onchain.max_tokens,
            vouched,
            vouched,
            max(journaled.checkpoint_tokens, onchain.checkpoint_tokens),
            expires_at=onchain.expires_at,
            result_key=first.result_key,
            voucher=best,
        )
        self._attached[onchain.id] = live
        attached.append(onchain.id)
        await self._send(
            framed,
            Ready(
                onchain.id,
                self.served.name,
                self.policy.credit_window,
                onchain.max_tokens,
                vouched,
                best.transcript_hash if best else None,
                best.signature if best else None,
                self.policy.cache_rate_bps if self.cache is not None else 0,
            ),
        )
        reader = asyncio.ensure_future(self._read(framed, live))
        try:
            await self._answer_prompts(framed, live)
        finally:
            reader.cancel()
            if live.generation is not None:
                live.generation.cancel()
        if live.failure is not None and not isinstance(live.failure, StreamClosed):
            await framed.fail(live.failure)

    # ----------------------------------------------------------------- inbound

    async def _read(self, framed: FramedStream, live: _Live) -> None:
        """Handle the client's frames while answers stream: vouchers, cancels, prompts."""
        try:
            while True:
                message = await framed.receive(timeout=self.policy.idle_timeout)
                await self._on_message(live, message)
        except ProtocolError as exc:
            live.failure = exc
        except Exception as exc:  # never leave the session hanging on a reader bug
            log.exception("session reader failed")
            live.failure = SessionRefused("internal_error", type(exc).__name__, retryable=True)
        finally:
            if live.generation is not None:
                live.generation.cancel()
            live.ended.set()

    async def _on_message(self, live: _Live, message: Message) -> None:
        if isinstance(message, VoucherMsg):
            self._accept_voucher(live, message)
        elif isinstance(message, Cancel):
            if live.generation is not None:
                live.generation.cancel()
        elif isinstance(message, (Prompt, AuditRequest)):
            if live.generation is not None or not live.prompts.empty():
                raise UnexpectedMessage("a prompt arrived while another is being answered")
            live.prompts.put_nowait(message)
        elif isinstance(message, Error):  # e.g. bad_accounting: the client walked away
            log.info("session %s: the client ended it: %s", live.id, message.code)
            raise StreamClosed(f"the client ended the session: {message.code}")
        else:
            raise UnexpectedMessage(f"a client may not send {message.TYPE} here")

    def _accept_voucher(self, live: _Live, message: VoucherMsg) -> None:
        # Cheap checks first: a stale, repeated or oversized voucher costs no ecrecover.
        if message.cumulative_tokens <= live.best:
            return  # stale or repeated: harmless, whoever signed it
        if message.cumulative_tokens > live.max_tokens:
            raise InvalidVoucher(
                f"the voucher covers {message.cumulative_tokens} tokens; the "
                f"deposit pays for {live.max_tokens}"
            )
        voucher = Voucher(
            live.id, message.cumulative_tokens, message.transcript_hash, message.signature
        )
        try:
            signer = recover_signer(self.domain, voucher)
        except Exception:  # a signature that recovers to nothing
            signer = None
        if signer != live.signer:
            raise InvalidVoucher("the voucher is not signed by the session's signer")
        self.journal.record_voucher(voucher)  # durable before it buys more tokens
        live.best, live.voucher = voucher.cumulative_tokens, voucher
        if live.unsaved is not None and live.best >= live.unsaved.billed:
            self._save_result(live)  # the voucher that pays for the whole answer
        if live.gate is not None:
            live.gate.extend(self._credit(live))
        due = live.best - live.checkpointed >= self.policy.checkpoint_every
        if due and not live.checkpointing:  # a failed one is tried again with the next voucher
            live.checkpointing = True
            self._spawn(self._checkpoint(live, voucher))

    # ----------------------------------------------------------------- answers

    def _credit(self, live: _Live) -> int:
        """Completion tokens the host may compute: those vouched for, plus the credit window
        (never less than the window: the first voucher comes only after tokens arrive)."""
        vouched = live.best - live.base  # completion tokens covered, once the prompt is
        return max(vouched, 0) + self.policy.credit_window

    async def _answer_prompts(self, framed: FramedStream, live: _Live) -> None:
        while not live.ended.is_set():
            next_prompt = asyncio.ensure_future(live.prompts.get())
            ended = asyncio.ensure_future(live.ended.wait())
            await asyncio.wait({next_prompt, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            if not next_prompt.done():
                next_prompt.cancel()
                return
            prompt = next_prompt.result()
            live.generation = asyncio.ensure_future(
                self._answer(framed, live, prompt)
                if isinstance(prompt, Prompt)
                else self._audit(framed, live, prompt)
            )
            try:
                await live.generation
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            finally:
                live.generation = None

    async def _answer(self, framed: FramedStream, live: _Live, prompt: Prompt) -> None:
        self._save_result(live)  # the previous answer, with what paid for it
        try:
            tokens = self.engine.chat_prompt(prompt.messages)
        except EngineError as exc:
            await self._send(framed, Error(exc.kind, str(exc), False))
            return
        if any(i >= self.engine.n_vocab for i in prompt.prefix_ids):
            await self._send(framed, Error("invalid_request", "prefix_ids outside the vocabulary"))
            return
        tokens += prompt.prefix_ids  # billed as prompt: this host computes them again
        base = live.billed
        room = live.max_tokens - base - len(tokens)
        if room <= 0:
            await self._send(
                framed,
                Error("deposit_exhausted", "the deposit is used up: open a new session", False),
            )
            return
        wanted = prompt.max_tokens or self.policy.max_tokens_default
        key = self._cache_key(prompt)
        if key is not None:
            assert self.cache is not None
            hit = await self.cache.lookup(
                key, live.client, _policy(prompt), prompt.temperature > 0, min(wanted, room)
            )
            if hit is not None:
                await self._answer_cached(framed, live, prompt, tokens, hit)
                return
        params = SamplingParams(
            min(wanted, room), prompt.temperature, prompt.top_p, prompt.seed, tuple(prompt.stop)
        )
        live.base = base + len(tokens)
        live.gate = CreditGate(self._credit(live), self.policy.voucher_timeout)
        record = self._record(live, base, tokens, sampling_of(prompt))
        ids_sent: list[int] = []
        text_sent: list[str] = []
        sent = 0  # completion token ids delivered: all this answer bills beyond its prompt
        refused = False
        finish = "cancelled"
        try:
            async for event in self.engine.generate(tokens, params, live.gate):
                if isinstance(event, Finished):
                    finish = event.finish_reason
                    self._observe(event)
                    break
                ids = list(event.token_ids)
                claim = base + len(tokens) + sent + len(ids)
                await self._send(framed, Token(event.text, claim, ids))
                sent += len(ids)
                ids_sent += ids
                text_sent.append(event.text)
        except EngineError as exc:
            refused = sent == 0  # never started: the client counts nothing for it, nor do we
            await self._send(framed, Error(exc.kind, str(exc), exc.kind == "busy"))
            return
        except asyncio.CancelledError:
            finish = "cancelled"
            if live.ended.is_set():
                raise
        finally:
            live.gate = None
            if not refused:
                live.billed = base + len(tokens) + sent
                self.journal.add_billed(live.id, len(tokens) + sent)
                # What the client's last voucher for this answer commits to (no finish
                # reason unless ``done`` goes out).
                live.unsaved = with_answer(record, ids_sent, "".join(text_sent), None)
        if finish == "length" and sent >= room:
            finish = "deposit"
        if key is not None and (finish == "stop" or (finish == "length" and sent == wanted)):
            limit = None if finish == "stop" else wanted
            text = "".join(text_sent)
            self._spawn(self._keep(key, live.client, prompt, ids_sent, text, limit))
        live.unsaved = with_answer(record, ids_sent, "".join(text_sent), finish)
        signature = self._sign(live.unsaved)
        if live.best >= live.unsaved.billed:
            self._save_result(live)  # the voucher for the last token came before `done`
        await self._send(framed, Done(finish, len(tokens), sent, live.billed, signature))

    async def _audit(self, framed: FramedStream, live: _Live, request: AuditRequest) -> None:
        """Judge another answer (:mod:`fabstir_node.audits`); billed like a prompt of its
        prompt + completion tokens, once the client has paid for everything before."""
        self._save_result(live)
        try:
            if self.audits is None:
                raise AuditRefused("not_supported", "this host does not run audits")
            if live.best < live.billed:
                raise AuditRefused("payment_required", "pay for the last answer first")
            record = self.audits.parse(request.record)
            if live.billed + record.audit_tokens > live.max_tokens:
                raise AuditRefused("deposit_exhausted", "the deposit does not cover this audit")
            report = await self.audits.audit(record)
        except AuditRefused as exc:
            await self._send(framed, Error(exc.code, str(exc), False))
            return
        live.billed += record.audit_tokens
        self.journal.add_billed(live.id, record.audit_tokens)
        verdict = AuditVerdict(
            report.transcript_hash,
            report.passed,
            report.mode,
            report.tokens,
            report.agreed,
            report.outside,
            report.reason,
            live.billed,
            report.z_score,
        )
        await self._send(framed, verdict)

    def _record(
        self, live: _Live, base: int, tokens: list[int], sampling: dict[str, Any]
    ) -> TranscriptRecord:
        """An answer's transcript record before its first token (see :mod:`transcripts`)."""
        return TranscriptRecord(
            live.id, base, live.transcript, self.served.sha256, tuple(tokens), (), "", sampling
        )

    def _sign(self, record: TranscriptRecord) -> bytes:
        """Our signature over what we served (a :class:`SignedTranscript`)."""
        return self.chain.sign_transcript(record.session_id, record.commitment())

    def _cache_key(self, prompt: Prompt) -> RequestKey | None:
        """The prompt's cache key when it opted in (a continuation of another host's answer
        never hits: its prefix is not a question)."""
        if self.cache is None or prompt.cache == "off" or prompt.prefix_ids:
            return None
        sampling = Sampling(prompt.temperature, prompt.top_p, prompt.seed, tuple(prompt.stop))
        return request_key(self.served.sha256, prompt.messages, sampling)

    async def _answer_cached(
        self, framed: FramedStream, live: _Live, prompt: Prompt, tokens: list[int], hit: Hit
    ) -> None:
        """Serve a cached answer: ``cache_hit``, its tokens in one frame, ``done``; billed by
        :func:`cached_tokens` at our cache rate, which the client checks."""
        base, rate = live.billed, self.policy.cache_rate_bps
        announced = CacheHit(hit.entry.id, round(hit.similarity, 4), rate)
        finish = hit.entry.finish
        ids, text = hit.entry.completion_ids, hit.entry.text
        billed = cached_tokens(len(tokens), len(ids), rate)
        record = self._record(live, base, tokens, served_from_cache(sampling_of(prompt), announced))
        await self._send(framed, announced)
        await self._send(framed, Token(text, base + billed, list(ids)))
        live.billed = base + billed
        self.journal.add_billed(live.id, billed)
        live.unsaved = with_answer(record, ids, text, finish)
        signature = self._sign(live.unsaved)
        if live.best >= live.unsaved.billed:
            self._save_result(live)
        await self._send(framed, Done(finish, len(tokens), len(ids), live.billed, signature))

    async def _keep(
        self,
        key: RequestKey,
        client: str,
        prompt: Prompt,
        ids: list[int],
        text: str,
        limit: int | None,
    ) -> None:
        assert self.cache is not None
        model, policy = self.served.sha256, _policy(prompt)
        try:
            await self.cache.insert(key, model, client, policy, ids, text, limit)
        except Exception as exc:  # the answer was delivered; only the cached copy is lost
            log.warning("could not cache an answer: %s", _reason(exc))

    async def _send(self, framed: FramedStream, message: Message) -> None:
        """Every frame of an answer leaves here (a fault-injecting test host overrides it)."""
        await framed.send(message)

    def _observe(self, finished: Finished) -> None:
        if finished.generation_s > 0 and finished.usage.completion_tokens > 1:
            rate = finished.usage.completion_tokens / finished.generation_s
            self.tokens_per_second = (
                rate if not self.tokens_per_second else (0.7 * self.tokens_per_second + 0.3 * rate)
            )

    def _save_result(self, live: _Live) -> None:
        """Seal and store the last answer with the best voucher (in the background): once a
        voucher covers all of it, or as it stands when the next prompt comes or the stream
        ends (a later voucher would commit to a later answer)."""
        record, live.unsaved = live.unsaved, None
        if record is None or live.result_key is None or self.results is None:
            return
        stored = StoredResult(record, live.voucher, self._sign(record))
        sealed = seal_result(live.result_key, stored)
        self._spawn(self._store_result(result_path(record.session_id, record.start), sealed))

    async def _store_result(self, path: str, sealed: bytes) -> None:
        assert self.results is not None
        try:
            await self.results.store_result(path, sealed)
        except Exception as exc:  # the answer was delivered; only the stored copy is lost
            log.warning("could not store the result at %s: %s", path, _reason(exc))

    # ----------------------------------------------------------------- chain

    async def _checkpoint(self, live: _Live, voucher: Voucher) -> None:
        try:
            await self.chain.checkpoint(voucher)
            self.journal.record_checkpoint(voucher.session_id, voucher.cumulative_tokens)
            live.checkpointed = max(live.checkpointed, voucher.cumulative_tokens)
        except Exception as exc:  # the next voucher tries again; the settlement covers it all
            log.warning("checkpoint of session %s failed: %s", voucher.session_id, _reason(exc))
        finally:
            live.checkpointing = False

    def settle_soon(self, session_id: int) -> None:
        """Settle ``session_id`` in the background, retrying with backoff until it is done."""
        task = self._settling.get(session_id)
        if task is None or task.done():
            self._settling[session_id] = self._background.spawn(self._settle_until_done(session_id))

    async def _settle_until_done(self, session_id: int) -> None:
        delay = self.policy.retry_base
        while True:
            try:
                await self.settle(session_id)
                self._locks.pop(session_id, None)
                self._settling.pop(session_id, None)
                return
            except Exception as exc:
                reason = _reason(exc)
                attempts = self.journal.record_failure(session_id, reason)
                log.warning(
                    "settlement of session %s failed (attempt %d, retry in %.0f s): %s",
                    session_id,
                    attempts,
                    delay,
                    reason,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)

    async def settle(self, session_id: int) -> None:
        """Settle ``session_id`` with its best voucher, exactly once (safe to call again)."""
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            journaled = self.journal.get(session_id)
            if journaled is None or journaled.state in (SETTLED, ABANDONED):
                return
            if session_id in self._attached:
                return  # a client reattached; it settles when that stream ends
            onchain = await self.chain.session(session_id)
            if onchain.status == SessionStatus.SETTLED:
                self.journal.set_state(session_id, SETTLED)
                return
            if journaled.best is None:
                # Nothing vouched: nothing to claim. The client gets its deposit back with
                # requestClose + finalize; we don't spend gas to refund for it.
                self.journal.set_state(session_id, ABANDONED)
                return
            self.journal.set_state(session_id, SETTLING)
            try:
                settlement = await self.chain.settle(journaled.best)
            except Exception:
                if (await self.chain.session(session_id)).status == SessionStatus.SETTLED:
                    self.journal.set_state(session_id, SETTLED)
                    return
                raise
            self.journal.set_state(session_id, SETTLED, settlement.tx_hash)
            log.info(
                "settled session %s: %s tokens, host %s wei, refund %s wei",
                session_id,
                settlement.tokens,
                settlement.host_amount,
                settlement.refund,
            )

    async def resume(self) -> None:
        """At start: settle every session the journal says we are still owed, then keep
        watching live sessions for expiry and close requests."""
        for journaled in self.journal.sessions(OPEN, SETTLING):
            self.settle_soon(journaled.session_id)
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """End streams whose session is about to expire or whose client asked to close
        on-chain, so they settle before anyone can finalize them on an older checkpoint."""
        while True:
            await asyncio.sleep(self.policy.watch_interval)
            if not self._attached:
                continue
            try:
                now = await self.chain.now()
                for live in list(self._attached.values()):
                    await self._check_live(live, now)
            except Exception as exc:  # the RPC hiccuped: look again next round
                log.debug("could not check live sessions: %s", exc)

    async def _check_live(self, live: _Live, now: int) -> None:
        if now >= live.expires_at - self.policy.expiry_margin:
            live.end(SessionRefused("session_expired", f"session {live.id} is about to expire"))
            return
        onchain = await self.chain.session(live.id)
        if onchain.status != SessionStatus.OPEN:
            live.end(SessionRefused("session_closed", f"session {live.id} is closing on-chain"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(coro)

    async def drain(self) -> None:
        """Wait for background checkpoints and settlements (used at shutdown and in tests)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        await self._background.join()


def _policy(prompt: Prompt) -> CachePolicy:
    return CachePolicy(
        prompt.cache, prompt.cache_min_similarity, prompt.cache_sampled, prompt.cache_share
    )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
