"""Jobs on the JobBoard, from the client's side (README "Batch and proven jobs").

The client writes the job's input into its own block store, serves it over Bitswap, announces
it in the DHT and posts the job with the input's root hash. Every host serving the model
fetches the input (checked against that hash) and keeps a copy, so
:meth:`JobClient.submit_batch` by default returns once one host holds it: the client may go
offline, and the job still survives its claimer dying. Results are fetched by the hash the host
completed with, from whoever provides them, and checked block by block and end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fabstir_sdk.batch import (
    BatchAnswer,
    BatchRequest,
    batch_payment,
    parse_input,
    parse_output,
)
from fabstir_sdk.contracts.deployment import ETH
from fabstir_sdk.contracts.jobs import JobBoard, JobStatus, OnchainJob
from fabstir_sdk.discovery import HostInfo, peer_of, registered_peers
from fabstir_sdk.errors import HostError, UsageError, mapped
from fabstir_sdk.models import resolve_model_id
from fabstir_sdk.openai_format import EXTENSION, template_message
from fabstir_sdk.p2p import peer_id_from_bytes
from fabstir_sdk.proofs import (
    VERIFIER_FILES,
    CircuitPin,
    Proof,
    ProofBundle,
    ProofError,
    commitment,
    input_commitment,
    outputs_as_floats,
    parse_result,
    parse_rows,
    render_rows,
    verify_offchain,
)
from fabstir_sdk.storage.content import blocks_of, read_bytes, write_bytes
from fabstir_sdk.storage.exchange import content_key
from fabstir_sdk.storage.layout import proof_file_path
from fabstir_sdk.tokenizer import Tokenizer
from fabstir_sdk.tokens import ensure_allowance, resolve_token

if TYPE_CHECKING:
    from fabstir_sdk.client import FabstirClient

__all__ = ["MAX_RESULT_BYTES", "BatchCheck", "JobClient", "Posted", "ProvenResult"]

#: The largest job result a client fetches.
MAX_RESULT_BYTES = 64 << 20


@dataclass(frozen=True)
class Posted:
    job_id: int
    input_hash: bytes
    copies: int  # hosts holding the input when submit returned


class JobClient:
    """Post jobs and fetch their results (``client.jobs``)."""

    def __init__(self, client: FabstirClient) -> None:
        self.client = client
        self.board = JobBoard(client.contracts)

    async def publish(self, data: bytes) -> bytes:
        """Serve ``data`` from our store and announce it; returns its root hash."""
        await self.client.start()
        store = self.client.blocks
        ref = await asyncio.to_thread(write_bytes, store, data, None)
        self.client.published.update([ref.root, *blocks_of(store, ref)])
        # With no DHT peer yet the announcement fails; hosts then ask the peers we dial.
        with contextlib.suppress(Exception):
            await self.client.exchange.provide(ref)
        return ref.root

    async def copies(self, root: bytes) -> int:
        """How many other peers announce that they hold content ``root``."""
        return len(await self.client.exchange.providers(content_key(root)))

    @mapped
    async def submit_batch(
        self,
        data: bytes,
        model: str | bytes,
        max_payment: int,
        duration: int = 24 * 3600,
        *,
        token: str = ETH,
        copies: int = 1,
        timeout: float = 120.0,
    ) -> Posted:
        """Post an OpenAI Batch input file as a job for ``model`` (checked first: a bad line
        raises :class:`~fabstir_sdk.batch.BatchFormatError` and nothing is paid). Returns once
        ``copies`` hosts hold the input (0: at once, the client must then stay online until a
        host fetched it)."""
        parse_input(data)
        return await self._post(data, model, max_payment, duration, token, copies, timeout)

    async def _post(
        self,
        data: bytes,
        model: str | bytes,
        max_payment: int,
        duration: int,
        token: str,
        copies: int,
        timeout: float,
        commitment: bytes = bytes(32),
        proof_required: bool = False,
    ) -> Posted:
        model_id = resolve_model_id(model)
        await self.client.start()
        await self._reach_hosts(model_id)
        root = await self.publish(data)
        contracts = self.client.contracts
        token = await asyncio.to_thread(resolve_token, contracts, token)
        if token != ETH:
            spender = self.board.board.address
            await asyncio.to_thread(ensure_allowance, contracts, token, max_payment, spender)
        job_id = await asyncio.to_thread(
            lambda: self.board.post(
                model_id,
                root,
                max_payment,
                duration,
                token=token,
                input_commitment=commitment,
                proof_required=proof_required,
            )
        )
        held = await self._wait_for_copies(root, copies, timeout)
        return Posted(job_id, root, held)

    async def _reach_hosts(self, model_id: bytes) -> None:
        """Dial the registered hosts of the model: our DHT announcement lands with them, and
        they fetch the input from us."""
        peers = await registered_peers(self.client.contracts, model_id)
        await asyncio.gather(
            *(self.client.p2p.connect(p.peer_id, p.addrs, 10) for p in peers),
            return_exceptions=True,  # a host we cannot reach is simply not asked
        )

    async def _wait_for_copies(self, root: bytes, wanted: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        held = 0
        while wanted > 0:
            held = await self.copies(root)
            if held >= wanted:
                break
            if time.monotonic() > deadline:
                raise HostError(
                    "no_copy",
                    f"no host took a copy of the job's input within {timeout:.0f} s; the job "
                    "is posted, keep this client online until a host claims it",
                    retryable=True,
                )
            await asyncio.sleep(0.5)
        return held

    @mapped
    async def job(self, job_id: int) -> OnchainJob:
        job = await asyncio.to_thread(self.board.job, job_id)
        if job.status == JobStatus.NONE:
            raise UsageError(f"there is no job {job_id}")
        return job

    @mapped
    async def result(self, job_id: int) -> bytes:
        """The job's result, fetched by the hash its host completed with and checked."""
        await self.client.start()
        job = await self.job(job_id)
        if not job.has_result:
            raise UsageError(f"job {job_id} has no result yet ({job.status.name.lower()})")
        return await self._content(job, job.result_hash, "result")

    async def _content(self, job: OnchainJob, root: bytes, what: str) -> bytes:
        """Content ``root`` of ``job``: from our own store, else from the job's host, else
        from whoever the DHT says holds it (every host of the model keeps a copy)."""
        exchange = self.client.exchange
        try:
            if self.client.blocks.has(root):
                ref = await exchange.fetch(root, [])  # ours: only read back and checked
            else:
                record = await asyncio.to_thread(self.client.contracts.host, job.host)
                first = [peer_of(record)]
                try:
                    ref = await exchange.fetch(root, first)
                except Exception:
                    await self._reach_hosts(job.model_id)
                    ref = await exchange.fetch(root)
        except Exception as exc:
            raise HostError("no_result", f"cannot fetch the {what} of job {job.id}: {exc}") from exc
        return await asyncio.to_thread(read_bytes, self.client.blocks, ref, MAX_RESULT_BYTES)

    @mapped
    async def batch_results(self, job_id: int) -> tuple[list[BatchAnswer], BatchCheck]:
        """A batch job's answers, in input order (OpenAI's Batch output format), and what
        our own count of them says about the payment the host asked."""
        answers = parse_output(await self.result(job_id))
        return answers, await self.check_batch(job_id, answers)

    @mapped
    async def check_batch(self, job_id: int, answers: list[BatchAnswer]) -> BatchCheck:
        """Count every token the host bills with the tokenizer the registry pins: the prompt
        from the input, the completion from the token ids the answer lists (whose text must
        be the answer's); the payment must not exceed those tokens at the host's price."""
        job = await self.job(job_id)
        requests = parse_input(await self._content(job, job.input_hash, "input"))
        tokenizer = await self._tokenizer(job)
        problems: list[str] = []
        if [a.custom_id for a in answers] != [r.custom_id for r in requests]:
            problems.append("the answers are not the requests' (their ids or order differ)")
        tokens = 0
        for request, answer in zip(requests, answers, strict=False):
            if answer.body is not None:
                counted, trouble = _count(tokenizer, request, answer)
                tokens += counted
                problems += trouble
        price = await asyncio.to_thread(
            self.client.contracts.price, job.host, job.model_id, job.token
        )
        fair = batch_payment(tokens, price, job.max_payment)
        if job.payment > fair:
            problems.append(
                f"the host asks {job.payment}; the {tokens} tokens counted are worth {fair}"
            )
        return BatchCheck(tokens, price, fair, job.payment, tuple(problems))

    @mapped
    async def submit_proven(
        self,
        model: str | bytes,
        rows: list[list[float]],
        bundle: ProofBundle,
        max_payment: int,
        duration: int = 3600,
        *,
        copies: int = 1,
        timeout: float = 120.0,
    ) -> Posted:
        """Post rows of input for proven model ``model`` as a job paid only on proofs. The
        job commits to the rows' quantized values (computed from ``bundle``'s settings, once
        the bundle is checked against the model's pin), so only proofs about exactly these
        rows are paid."""
        model_id = resolve_model_id(model)
        await self._checked_bundle(model_id, bundle)
        data = render_rows(rows)
        parse_rows(data, bundle.inputs)  # the host's own check: a bad row is refused unpaid
        commitment = await asyncio.to_thread(input_commitment, rows, bundle)
        return await self._post(
            data, model_id, max_payment, duration, ETH, copies, timeout,
            commitment, proof_required=True,
        )  # fmt: skip

    @mapped
    async def proven_result(self, job_id: int, bundle: ProofBundle) -> ProvenResult:
        """A proven job's outputs, from the proofs its host stored, each checked: the
        proofs' inputs must be the job's (its input commitment), their outputs those the
        ProofSystem accepted on-chain (the output commitment), and each proof must verify
        off-chain against the pinned circuit."""
        job = await self.job(job_id)
        await self._checked_bundle(job.model_id, bundle)
        proofs = parse_result(await self.result(job_id))
        n_in, n_out = bundle.inputs, bundle.outputs
        problems = []
        if commitment(v for p in proofs for v in p.inputs(n_in)) != job.input_commitment:
            problems.append("the proofs are not about the job's input")
        if commitment(v for p in proofs for v in p.outputs(n_out)) != job.output_commitment:
            problems.append("the outputs are not those the ProofSystem accepted")
        for n, proof in enumerate(proofs):
            if not await asyncio.to_thread(verify_offchain, proof, bundle):
                problems.append(f"proof {n} does not verify")
        outputs = [outputs_as_floats(p, bundle) for p in proofs]
        return ProvenResult(outputs, proofs, tuple(problems))

    @mapped
    async def bundle(self, model: str | bytes) -> ProofBundle:
        """What checking proven model ``model``'s proofs takes (EZKL's settings, the
        verifying key, the SRS): from the disk cache, else from the store of a host serving
        it, each file checked against the registry's pin."""
        await self.client.start()
        model_id = resolve_model_id(model)
        contracts = self.client.contracts
        pin = await asyncio.to_thread(CircuitPin.from_registry, contracts.models, model_id)
        directory = proof_cache_dir() / pin.onnx_sha256.hex()
        with contextlib.suppress(ProofError):
            cached = ProofBundle(directory)
            cached.check(pin, chain_id=contracts.deployment.chain_id, need_onnx=False)
            return cached
        problems = []
        for peer in await registered_peers(contracts, model_id):
            try:
                root = await self.client.exchange.root_of(peer)
                files = {
                    name: await self.client.exchange.get_file(
                        peer, root, proof_file_path(pin.onnx_sha256, name)
                    )
                    for name in VERIFIER_FILES
                }
                fetched = await asyncio.to_thread(_write_bundle, directory, files)
                fetched.check(pin, chain_id=contracts.deployment.chain_id, need_onnx=False)
                return fetched
            except Exception as exc:  # the next host may hold the right files
                problems.append(f"{peer.peer_id}: {exc}")
        raise HostError(
            "no_bundle", f"no host gave the proven model's pinned files: {'; '.join(problems)}"
        )

    async def _checked_bundle(self, model_id: bytes, bundle: ProofBundle) -> CircuitPin:
        contracts = self.client.contracts
        pin = await asyncio.to_thread(CircuitPin.from_registry, contracts.models, model_id)
        bundle.check(pin, chain_id=contracts.deployment.chain_id, need_onnx=False)
        return pin

    async def _tokenizer(self, job: OnchainJob) -> Tokenizer:
        record = await asyncio.to_thread(self.client.contracts.host, job.host)
        host = HostInfo(
            record.address, peer_id_from_bytes(record.peer_id), list(record.addrs), 0, 0, ""
        )
        return await self.client.tokenizer_for(job.model_id, host)


def proof_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabstir" / "proofs"


def _write_bundle(directory: Path, files: dict[str, bytes]) -> ProofBundle:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
    return ProofBundle(directory)


@dataclass(frozen=True)
class ProvenResult:
    """A proven job's outputs (one list per row, dequantized) and the proofs behind them."""

    outputs: list[list[float]]
    proofs: list[Proof]
    problems: tuple[str, ...]

    @property
    def verified(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class BatchCheck:
    """Our own count of a batch job's answers against the payment its host asked."""

    tokens: int  # prompt + completion tokens of every answer, counted by us
    price: int  # the host's price per 1000 tokens in the job's token
    fair: int  # what those tokens cost (at most the job's maximum)
    asked: int  # the payment the host completed with
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _count(
    tokenizer: Tokenizer, request: BatchRequest, answer: BatchAnswer
) -> tuple[int, list[str]]:
    """The tokens one answer used by our count, and what disagrees with the host's."""
    body = answer.body or {}
    messages = [
        template_message(str(m.get("role", "")), m.get("content"))
        for m in request.body.get("messages", [])
        if isinstance(m, dict)
    ]
    prompt = len(tokenizer.chat_tokens(messages))
    ids = (body.get(EXTENSION) or {}).get("completion_ids")
    claimed_prompt, claimed_completion = answer.usage
    problems = []
    if claimed_prompt != prompt:
        problems.append(
            f"{answer.custom_id}: {claimed_prompt} prompt tokens billed, {prompt} counted"
        )
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        return prompt, [*problems, f"{answer.custom_id}: the answer lists no completion token ids"]
    if claimed_completion != len(ids):
        problems.append(
            f"{answer.custom_id}: {claimed_completion} completion tokens billed, {len(ids)} listed"
        )
    text = "".join(str(c.get("message", {}).get("content", "")) for c in body.get("choices", []))
    decoded = b"".join(tokenizer.piece(i, special=False) for i in ids).decode(errors="replace")
    if not decoded.strip().startswith(text.strip()):
        problems.append(f"{answer.custom_id}: the text is not what its token ids say")
    return prompt + len(ids), problems
