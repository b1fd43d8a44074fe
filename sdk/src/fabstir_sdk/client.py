"""``FabstirClient``: a wallet on a chain plus a libp2p host; finds hosts and opens paid
sessions with them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir_sdk import tokenizer as tokenizer_cache
from fabstir_sdk.audit import AuditError, Auditor, AuditOutcome, AuditPolicy, AuditReport
from fabstir_sdk.contracts import ETH, Deployment, Voucher, VoucherDomain, recover_signer
from fabstir_sdk.contracts.client import Contracts, ModelPin
from fabstir_sdk.contracts.reputation import Reputation
from fabstir_sdk.contracts.transactions import SmartAccountSender
from fabstir_sdk.discovery import Discovery, HostInfo, peer_of
from fabstir_sdk.errors import (
    ConfigurationError,
    FabstirError,
    HostError,
    NoHostAvailable,
    UsageError,
    mapped,
)
from fabstir_sdk.failover import STALL_TIMEOUT_S, FailoverChat
from fabstir_sdk.jobs import JobClient
from fabstir_sdk.models import installed_model, resolve_model_id
from fabstir_sdk.p2p import P2PError, P2PHost, PeerAddress
from fabstir_sdk.protocol import (
    HOSTS_TOPIC,
    SESSION_PROTOCOL,
    Error,
    FramedStream,
    Open,
    ProtocolError,
    Ready,
)
from fabstir_sdk.session import Session
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.dirv1 import FileRef
from fabstir_sdk.storage.errors import NotFound, StorageError
from fabstir_sdk.storage.exchange import Exchange
from fabstir_sdk.storage.layout import result_dir, tokenizer_path
from fabstir_sdk.tasks import TaskSet
from fabstir_sdk.tokenizer import MAX_TOKENIZER_BYTES, Tokenizer, TokenizerError
from fabstir_sdk.tokens import ensure_allowance, resolve_token
from fabstir_sdk.transcripts import (
    MAX_RESULT,
    SignedTranscript,
    TranscriptRecord,
    open_result,
    result_key,
    verify_result,
)

log = logging.getLogger(__name__)

DEFAULT_DEPOSIT = 10**15  # 0.001 ETH
DEFAULT_DURATION = 3600
ATTACH_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # retries of an open the host rate-limited


@dataclass(frozen=True)
class SessionResult:
    """One answer of a session, as the host stored it and we checked it."""

    record: TranscriptRecord
    voucher: Voucher | None
    paid: bool  # our session signer's voucher commits to exactly this record
    reason: str
    signed: SignedTranscript | None = None  # with the host's signature, when it stored one

    @property
    def text(self) -> str:
        return self.record.text


@dataclass(frozen=True)
class StrandedDeposit:
    """A deposit whose host refused the session after it was made; close is requested."""

    session_id: int
    host: str
    reason: str
    finalizable_at: int | None  # unix time from which `fabstir session refund` returns it

    @property
    def advice(self) -> str:
        when = (
            f"after {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.finalizable_at))}"
            if self.finalizable_at
            else "once its close request is mined"
        )
        return (
            f"host {self.host} refused session {self.session_id} after the deposit "
            f"({self.reason}); close is requested: `fabstir session refund {self.session_id}` "
            f"{when} returns the deposit"
        )


def _resumed_voucher(ready: Ready, domain: VoucherDomain, signer: str) -> Voucher | None:
    """The voucher behind ``ready.billed_tokens``, if it really is signed by our signer."""
    if not ready.billed_tokens or ready.transcript_hash is None or ready.signature is None:
        return None
    voucher = Voucher(ready.session_id, ready.billed_tokens, ready.transcript_hash, ready.signature)
    try:
        return voucher if recover_signer(domain, voucher) == signer else None
    except Exception:  # a malformed signature is as good as none
        return None


class FabstirClient:
    @mapped
    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        deployment: Deployment | str | Path,
        *,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        bootstrap: list[str] | None = None,
        audit: AuditPolicy | None = None,
        smart_account: str | None = None,
    ) -> None:
        """``smart_account`` (an address) makes every transaction go through that ERC-4337
        account's ``execute``, signed and paid for by ``private_key``, its owner: the account
        is the client of our sessions and jobs, pays their deposits from its own balance and
        receives their refunds. Session vouchers are still signed by a fresh key per session."""
        if not isinstance(deployment, Deployment):
            deployment = Deployment.load(deployment)
        try:
            self.account = Account.from_key(private_key)
        except (ValueError, TypeError):  # its message may quote the key: never show it
            raise ConfigurationError("private_key is not a valid private key") from None
        if smart_account is None:
            self.contracts = Contracts.connect(rpc_url, deployment, self.account)
        else:
            self.contracts = Contracts.connect(rpc_url, deployment)
            self.contracts.sender = SmartAccountSender(
                self.contracts.w3, self.account, smart_account
            )
        self.p2p = P2PHost(secrets.token_bytes(32), [listen])
        self._blocks: BlockStore | None = None  # opened by start(), gone at close()
        self._exchange: Exchange | None = None
        # Blocks we serve to peers: the inputs of the jobs we post (nothing else we hold).
        self.published: set[bytes] = set()
        self._jobs: JobClient | None = None
        self.discovery = Discovery(self.contracts, self.p2p)
        self.p2p.on_gossip(
            HOSTS_TOPIC, self.discovery.on_announcement, validate=self.discovery.validate
        )
        self._bootstrap = bootstrap or []
        self._started = False
        self._tokenizers: dict[bytes, Tokenizer] = {}
        self._pins: dict[bytes, ModelPin] = {}
        self.stranded: list[StrandedDeposit] = []  # deposits whose host refused after them
        self.audit_policy = audit or AuditPolicy()
        self.audits: list[AuditOutcome] = []  # every audit this client ran, in order
        self._auditors: dict[bytes, Auditor] = {}
        self._audit_sessions: dict[bytes, Session] = {}  # model id -> a host auditing for us
        self._audit_tasks = TaskSet()
        self._reputation: Reputation | None = None

    @mapped
    async def start(self) -> FabstirClient:
        if not self._started:
            # Where blocks fetched from hosts land (tokenizers, results): a temporary store.
            self._blocks = BlockStore(tempfile.mkdtemp(prefix="fabstir-blocks-"))
            bitswap = Bitswap(self.p2p, self._blocks, served=self.published.__contains__)
            self._exchange = Exchange(self.p2p, self._blocks, bitswap)
            await self.p2p.start()
            self._started = True
            for addr in self._bootstrap:
                with contextlib.suppress(Exception):
                    await self.p2p.connect(addr.rsplit("/p2p/", 1)[-1], [addr])
        return self

    async def close(self) -> None:
        self._audit_tasks.cancel()
        for session in self._audit_sessions.values():
            with contextlib.suppress(Exception):
                await session.close()
        self._audit_sessions.clear()
        for auditor in self._auditors.values():
            auditor.close()
        if self._started:
            await self.p2p.stop()
            self._started = False
        if self._blocks is not None:
            self._blocks.close()
            shutil.rmtree(self._blocks.path, ignore_errors=True)
            self._blocks = self._exchange = None

    @property
    def address(self) -> str:
        """Who we are on-chain: the client of our sessions and jobs (our key's address, or
        the smart account's)."""
        return self.contracts.address

    @property
    def blocks(self) -> BlockStore:
        """Our block store (after :meth:`start`): what we fetched and what we publish."""
        if self._blocks is None:
            raise UsageError("the client is not started: use `async with` or await start()")
        return self._blocks

    @property
    def jobs(self) -> JobClient:
        """Post jobs to the JobBoard and fetch their results."""
        if self._jobs is None:
            self._jobs = JobClient(self)
        return self._jobs

    @property
    def reputation(self) -> Reputation:
        """Hosts' public records: ratings, audit reports, heartbeats."""
        if self._reputation is None:
            self._reputation = Reputation(self.contracts)
        return self._reputation

    @property
    def exchange(self) -> Exchange:
        """Blocks and trees of other peers (after :meth:`start`)."""
        if self._exchange is None:
            raise UsageError("the client is not started: use `async with` or await start()")
        return self._exchange

    async def __aenter__(self) -> FabstirClient:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @mapped
    async def find_hosts(self, model: str | bytes, token: str = ETH) -> list[HostInfo]:
        """Hosts serving ``model`` (catalogue name, repo/file or id), best first, with their
        price in ``token`` (ETH, an ERC20 address, or a deployment token's name or symbol)."""
        await self.start()
        model_id = resolve_model_id(model)
        token = await asyncio.to_thread(resolve_token, self.contracts, token)
        return await self.discovery.find_hosts(model_id, token)

    @mapped
    async def open_session(
        self,
        model: str | bytes,
        *,
        host: str | None = None,
        deposit: int = DEFAULT_DEPOSIT,
        max_price: int | None = None,
        duration: int = DEFAULT_DURATION,
        exclude: set[str] | None = None,
        voucher_every: int = 8,
        token: str = ETH,
    ) -> Session:
        """Deposit, make the session signer, connect and attach. ``host`` pins an address.

        Each candidate is dialed and asked over the info protocol whether it serves the model
        at its registered price with room to spare, and its tokenizer is checked against the
        registry's pin, all before any deposit. A host that still refuses after the deposit
        gets ``requestClose`` at once (see :attr:`stranded`) and the next host is tried.

        ``token`` pays in an ERC20 instead of ETH (an address, or a deployment token's name
        or symbol such as ``TestUSD``); ``deposit`` is then in its units, and the marketplace
        is approved for exactly the deposit when the allowance falls short."""
        await self.start()
        model_id = resolve_model_id(model)
        token = await asyncio.to_thread(resolve_token, self.contracts, token)
        candidates = await self.find_hosts(model_id, token)
        if host is not None:
            candidates = [h for h in candidates if h.address.lower() == host.lower()]
        if exclude:
            lowered = {e.lower() for e in exclude}
            candidates = [h for h in candidates if h.address.lower() not in lowered]
        if max_price is not None:
            candidates = [h for h in candidates if h.price <= max_price]
        if not candidates:
            raise NoHostAvailable("no registered host serves this model within your limits")
        failures = []
        for chosen in candidates:
            try:
                tokenizer = await self._vet(chosen, model_id, token)
            except FabstirError as exc:
                failures.append(f"{chosen.address}: {exc}")
                continue
            signer = Account.create()
            await asyncio.to_thread(ensure_allowance, self.contracts, token, deposit)
            session_id, _ = await asyncio.to_thread(
                self.contracts.open_session,
                chosen.address,
                model_id,
                deposit,
                chosen.price,
                duration,
                signer.address,
                token,
            )
            try:
                return await self._attach_patiently(
                    session_id, chosen, signer, tokenizer, voucher_every
                )
            except FabstirError as exc:  # refused after our deposit: recover it, go on
                failures.append(f"{chosen.address}: {exc}")
                await self._strand(session_id, chosen, exc)
            except BaseException as exc:  # cancelled, or a bug: still never leave it locked
                await asyncio.shield(self._strand(session_id, chosen, exc))
                raise
        message = "no host is available: " + "; ".join(failures)
        if self.stranded:
            message += ". " + self.stranded[-1].advice
        raise NoHostAvailable(message)

    async def _attach_patiently(
        self,
        session_id: int,
        host: HostInfo,
        signer: LocalAccount,
        tokenizer: Tokenizer,
        voucher_every: int,
    ) -> Session:
        """Attach, waiting out a host that rate-limits opens (our deposit is already made)."""
        for delay in ATTACH_BACKOFF_S:
            try:
                return await self.attach(
                    session_id, host, signer, tokenizer, voucher_every=voucher_every
                )
            except HostError as exc:
                if exc.code != "rate_limited":
                    raise
            await asyncio.sleep(delay)
        return await self.attach(session_id, host, signer, tokenizer, voucher_every=voucher_every)

    async def _vet(self, host: HostInfo, model_id: bytes, token: str = ETH) -> Tokenizer:
        """Before depositing: the host is reachable, offers the model at the price we'll pay,
        has capacity, and serves the pinned tokenizer. (Asking for its info dials it.)"""
        info = await self.discovery.ask_info(host)
        offer = next((m for m in info.models if m.get("model_id") == model_id), None)
        if offer is None:
            raise HostError("wrong_model", "the host does not serve this model now")
        prices = {str(k).lower(): v for k, v in dict(offer.get("prices") or {}).items()}
        ask = prices.get(token.lower())
        if not isinstance(ask, int) or ask > host.price:
            raise HostError("price_too_low", f"the host asks {ask} now, registered {host.price}")
        if info.capacity and info.load >= info.capacity:
            raise HostError("busy", f"the host is full ({info.load}/{info.capacity})", True)
        return await self.tokenizer_for(model_id, host)

    async def tokenizer_for(self, model_id: bytes, host: HostInfo) -> Tokenizer:
        """The model's tokenizer: from memory, the disk cache or ``host``, always checked
        against the sha256 the ModelRegistry pins."""
        pin = (await self.model_pin(model_id)).tokenizer_sha256
        if pin in self._tokenizers:
            return self._tokenizers[pin]
        data = tokenizer_cache.cached(pin)  # checked against the pin as it is read
        if data is None:
            data = await self._fetch_tokenizer(model_id, host)
            try:
                tokenizer = await asyncio.to_thread(Tokenizer.from_pinned, data, pin)
            except TokenizerError as exc:
                raise HostError("bad_tokenizer", f"the host's tokenizer: {exc}") from exc
            tokenizer_cache.store(data)
        else:
            tokenizer = await asyncio.to_thread(Tokenizer, data)
        self._tokenizers[pin] = tokenizer
        return tokenizer

    async def model_pin(self, model_id: bytes) -> ModelPin:
        """The ModelRegistry's pins for ``model_id`` (they never change: kept in memory)."""
        if model_id not in self._pins:
            self._pins[model_id] = await asyncio.to_thread(self.contracts.model_pin, model_id)
        return self._pins[model_id]

    def result_key(self, session_id: int) -> bytes:
        """The key our answers in session ``session_id`` are stored under at the host."""
        chain_id = self.contracts.deployment.chain_id
        return result_key(bytes(self.account.key), chain_id, session_id)

    async def _fetch_tokenizer(self, model_id: bytes, host: HostInfo) -> bytes:
        """The tokenizer file from the host's store, by the model's pin (checked by the caller
        against the tokenizer's own pin)."""
        peer = PeerAddress(host.peer_id, host.addrs)
        path = tokenizer_path((await self.model_pin(model_id)).sha256)
        try:
            root = await self.exchange.root_of(peer)
            return await self.exchange.get_file(peer, root, path, MAX_TOKENIZER_BYTES)
        except StorageError as exc:
            raise HostError("bad_tokenizer", f"the host's tokenizer: {exc}") from exc

    @mapped
    async def results(self, session_id: int) -> list[SessionResult]:
        """The answers of session ``session_id`` as its host stored them, fetched from its
        store (also long after the connection was lost), opened with our key and checked
        against our own vouchers: ``paid`` says our signer paid for exactly that transcript."""
        await self.start()
        onchain = await asyncio.to_thread(self.contracts.session, session_id)
        if onchain.client.lower() != self.address.lower():
            raise UsageError(f"session {session_id} was not opened by {self.address}")
        record = await asyncio.to_thread(self.contracts.host, onchain.host)
        peer = peer_of(record)
        key, domain = self.result_key(session_id), self.contracts.voucher_domain()
        try:
            root = await self.exchange.root_of(peer)
            entries = await self.exchange.list_dir(peer, root, result_dir(session_id))
        except NotFound:
            return []
        except (StorageError, P2PError) as exc:
            raise HostError("no_results", f"cannot read the host's store: {exc}", True) from exc
        results = []
        for name in sorted(entries):
            entry = entries[name]
            if not isinstance(entry, FileRef) or not name.isdigit():
                continue
            sealed = await self.exchange.read(entry.content, [peer], MAX_RESULT + 1024)
            try:
                stored = open_result(key, sealed, session_id, int(name))
            except StorageError as exc:
                raise HostError("bad_result", f"the stored answer {name}: {exc}") from exc
            verdict = verify_result(stored, domain, onchain.signer)
            signed = stored.signed
            if signed is not None and (signed.signer(domain) or "").lower() != onchain.host.lower():
                signed = None  # not the host's signature: no evidence of anything
            results.append(
                SessionResult(stored.record, stored.voucher, verdict.paid, verdict.reason, signed)
            )
        return results

    async def _strand(self, session_id: int, host: HostInfo, reason: BaseException) -> None:
        """The host refused after our deposit: ask to close at once and say how to recover."""
        finalizable_at = None
        with contextlib.suppress(FabstirError):
            await asyncio.to_thread(self.contracts.request_close, session_id)
            finalizable_at = await asyncio.to_thread(self.contracts.finalizable_at, session_id)
        stranded = StrandedDeposit(session_id, host.address, str(reason), finalizable_at)
        self.stranded.append(stranded)
        log.warning("%s", stranded.advice)

    @mapped
    async def attach(
        self,
        session_id: int,
        host: HostInfo,
        signer: LocalAccount,
        tokenizer: Tokenizer | None = None,
        voucher_every: int = 8,
    ) -> Session:
        """Connect to ``host`` for an already opened session (also to re-attach to one)."""
        onchain = await asyncio.to_thread(self.contracts.session, session_id)
        if tokenizer is None:
            tokenizer = await self.tokenizer_for(onchain.model_id, host)
        stream = await self.p2p.open_stream(PeerAddress(host.peer_id, host.addrs), SESSION_PROTOCOL)
        # open_stream refuses a remote whose Noise-authenticated peer id is not the registered
        # one, so a host cannot be impersonated by whoever answers at its address.
        framed = FramedStream(stream)
        try:
            chain_id = self.contracts.deployment.chain_id
            await framed.send(Open(session_id, chain_id, result_key=self.result_key(session_id)))
            ready = await framed.receive(timeout=30)
        except ProtocolError as exc:
            await stream.reset()
            raise HostError(exc.code, f"host did not answer open: {exc}", True) from exc
        if isinstance(ready, Error):
            await stream.reset()
            raise HostError(ready.code, ready.message, ready.retryable)
        if not isinstance(ready, Ready) or ready.session_id != session_id:
            await stream.reset()
            raise HostError("bad_ready", "host answered open with something else")
        domain = self.contracts.voucher_domain()
        resumed = _resumed_voucher(ready, domain, signer.address)
        if resumed is None and ready.billed_tokens:
            await stream.reset()
            raise HostError(
                "bad_accounting",
                f"host says {ready.billed_tokens} tokens are billed without our voucher for them",
            )
        session = Session(
            session_id=session_id,
            host=host.address,
            peer_id=host.peer_id,
            model=onchain.model_id,
            model_sha256=(await self.model_pin(onchain.model_id)).sha256,
            deposit=onchain.deposit,
            price=onchain.price,
            max_tokens=onchain.max_tokens,
            credit_window=ready.credit_window,
            signer=signer,
            domain=domain,
            framed=framed,
            contracts=self.contracts,
            tokenizer=tokenizer,
            voucher_every=voucher_every,
            cache_rate_bps=ready.cache_rate_bps,
        )
        session.resume_from(resumed)
        if self.audit_policy.share > 0:
            session.on_transcript = self._sample_audit
        return session

    # ----------------------------------------------------------------- audits

    @mapped
    async def audit(
        self, transcript: SignedTranscript, *, report: bool | None = None
    ) -> AuditOutcome:
        """Re-run a host-signed answer on the pinned model and judge it
        (:mod:`fabstir_sdk.audit`). A failure is reported to the ReputationSystem, with the
        transcript as public evidence, unless ``report`` (default: the policy's) is off."""
        policy = self.audit_policy
        if policy.remote:
            result = await self._audit_remotely(transcript)
        else:
            auditor = await self._auditor(transcript.record.model_sha256)
            result = await asyncio.to_thread(auditor.audit, transcript)
        tx = None
        if (policy.report if report is None else report) and (
            not result.passed or policy.report_passes
        ):
            tx = await asyncio.to_thread(self._report, transcript, result.passed)
        outcome = AuditOutcome(transcript.record.session_id, result, tx)
        self.audits.append(outcome)
        return outcome

    async def wait_audits(self) -> list[AuditOutcome]:
        """Wait for the background audits started so far; returns every audit run."""
        await self._audit_tasks.join()
        return list(self.audits)

    async def _audit_remotely(self, transcript: SignedTranscript) -> AuditReport:
        """Audit on another host serving the model (never the one that served the answer),
        in a session kept open for further audits."""
        onchain = await asyncio.to_thread(self.contracts.session, transcript.record.session_id)
        session = self._audit_sessions.get(onchain.model_id)
        if session is not None and session.host.lower() == onchain.host.lower():
            await session.close()  # our auditor served this answer: it may not judge it
        if session is None or session.closed:
            session = await self.open_session(onchain.model_id, exclude={onchain.host})
            self._audit_sessions[onchain.model_id] = session
        try:
            return await session.audit(transcript)
        except HostError:
            self._audit_sessions.pop(onchain.model_id, None)
            with contextlib.suppress(Exception):
                await session.close()
            raise

    def _report(self, transcript: SignedTranscript, passed: bool) -> str | None:
        if self.reputation.audit_reported(transcript.transcript_hash):
            return None  # reported before (each transcript counts once)
        receipt = self.reputation.report_audit(
            transcript.record.session_id, transcript.evidence(), transcript.host_signature, passed
        )
        return "0x" + bytes(receipt["transactionHash"]).hex()

    async def _auditor(self, sha256: bytes) -> Auditor:
        if sha256 not in self._auditors:
            path = self.audit_policy.model_path or installed_model(sha256)
            if path is None:
                raise AuditError(
                    f"no local copy of model {sha256.hex()[:16]}... to audit with: give its "
                    "GGUF (AuditPolicy(model_path=...), `fabstir audit --model`)"
                )
            threads = self.audit_policy.n_threads
            self._auditors[sha256] = await asyncio.to_thread(Auditor, path, n_threads=threads)
        return self._auditors[sha256]

    def _sample_audit(self, transcript: SignedTranscript) -> None:
        """Audit a random share of the answers, in the background (answers from a cache are
        not audited: their tokens were made for another prompt)."""
        if transcript.record.from_cache:
            return
        if self.audit_policy.picks():
            self._audit_tasks.spawn(self._audit_quietly(transcript))

    async def _audit_quietly(self, transcript: SignedTranscript) -> None:
        try:
            outcome = await self.audit(transcript)
        except Exception as exc:  # an audit that cannot run is no verdict on the host
            log.warning("could not audit an answer of session %s: %s",
                        transcript.record.session_id, exc)  # fmt: skip
            return
        if not outcome.report.passed:
            log.warning("session %s: the host's answer failed its audit: %s",
                        outcome.session_id, outcome.report.reason)  # fmt: skip

    def chat(
        self,
        model: str | bytes,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int = 256,
        session: Session | None = None,
        deposit: int = DEFAULT_DEPOSIT,
        max_price: int | None = None,
        token: str = ETH,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        max_failovers: int = 2,
        stall_timeout: float = STALL_TIMEOUT_S,
        cache: str = "off",
        cache_min_similarity: float | None = None,
        cache_sampled: bool = False,
        cache_share: bool = False,
    ) -> FailoverChat:
        """An answer that fails over to the next host mid-stream (see :mod:`failover`).

        Reuses ``session`` when given (the answer's ``session`` is the one to reuse next).
        ``cache*`` opt in to the host's answer cache (:meth:`Session.chat`)."""
        return FailoverChat(
            self,
            model,
            messages,
            max_tokens=max_tokens,
            session=session,
            open_kwargs={"deposit": deposit, "max_price": max_price, "token": token},
            params={
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "stop": stop,
                "cache": cache,
                "cache_min_similarity": cache_min_similarity,
                "cache_sampled": cache_sampled,
                "cache_share": cache_share,
            },
            max_failovers=max_failovers,
            stall_timeout=stall_timeout,
        )
