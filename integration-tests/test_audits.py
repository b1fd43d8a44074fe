"""Signed transcripts, audits by re-execution and the ReputationSystem, end to end: an honest
host's answers pass; a host serving other weights under the pinned model's name is caught,
the failure goes on-chain with the signed transcript as evidence, and the host drops in
``fabstir hosts``; ratings are bound to settled sessions and their clients."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_node.inference import Engine
from fabstir_node.runtime import HostNode
from fabstir_node.sessions import SessionService
from fabstir_sdk.audit import AuditPolicy
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts import sign_transcript
from fabstir_sdk.contracts.reputation import Reputation
from fabstir_sdk.errors import HostError
from fabstir_sdk.protocol import AuditVerdict
from fabstir_sdk.session import Session
from fabstir_sdk.transcripts import SignedTranscript, TranscriptRecord

from conftest import Devnet, assert_settled_for, fabstir, run

MODEL = "local/tiny.gguf"
MESSAGES = [{"role": "user", "content": "Tell me about lighthouses and the sea."}]
CLIENT = 5  # the CLI's key, so `fabstir audit` and `fabstir rate` act for the same account


def substituted(weights: Path) -> type[SessionService]:
    class SubstitutedModelHost(SessionService):
        """Fault injected on purpose: answers with ``weights`` under the pinned model's name
        (and its sha256 in every transcript it signs)."""

        def __init__(self, engine: Engine, *args: Any, **kwargs: Any) -> None:
            impostor = Engine(weights, n_ctx=engine.n_ctx, n_threads=1)
            impostor.load()
            super().__init__(impostor, *args, **kwargs)

    return SubstitutedModelHost


class ForeignSignatureHost(SessionService):
    """Fault injected on purpose: signs its transcripts with a key that is not its own."""

    def _sign(self, record: TranscriptRecord) -> bytes:
        stranger = Account.create()
        domain = self.chain.contracts.voucher_domain()
        return sign_transcript(stranger, domain, record.session_id, record.commitment())


class OverchargingAuditor(SessionService):
    """Fault injected on purpose: claims one token more for every audit it runs."""

    async def _send(self, framed: Any, message: Any) -> None:
        if isinstance(message, AuditVerdict):
            message = dataclasses.replace(message, tokens=message.tokens + 1)
        await super()._send(framed, message)


async def signed_answer(
    client: FabstirClient, node: HostNode, max_tokens: int
) -> tuple[Session, SignedTranscript]:
    """One greedy answer from ``node`` in a new session, with the host's signature."""
    session = await client.open_session(MODEL, host=node.keys.account.address)
    stream = session.chat(MESSAGES, max_tokens=max_tokens, temperature=0)
    await stream.collect()
    assert stream.transcript is not None and len(stream.token_ids) > 2
    return session, stream.transcript


def last_session_with(client: FabstirClient, node: HostNode) -> int:
    opened = client.contracts.market.events.SessionOpened().get_logs(
        from_block=0, argument_filters={"host": node.keys.account.address}
    )
    return int(opened[-1]["args"]["sessionId"])


@pytest.fixture(scope="module")
def impostor_weights(devnet: Devnet) -> Path:
    return write_tiny_gguf(devnet.root / "impostor.gguf", seed=8)


def test_an_impostor_is_caught_reported_on_chain_and_ranked_down(
    devnet: Devnet, impostor_weights: Path
) -> None:
    async def main() -> None:
        honest = await devnet.start_node(1)
        impostor = await devnet.start_node(2, service=substituted(impostor_weights))
        policy = AuditPolicy(1.0, devnet.model_path, report=True, report_passes=True)
        client = devnet.client(CLIENT, audit=policy)
        reputation = Reputation(client.contracts)
        try:
            sessions = {}
            for node in (honest, impostor):
                session, transcript = await signed_answer(client, node, 24)
                # The host signed exactly what the client's last voucher committed to.
                assert transcript.signer(session.domain) == node.keys.account.address
                assert transcript.transcript_hash == session.transcript
                sessions[node.keys.account.address] = session
            outcomes = {o.session_id: o for o in await client.wait_audits()}
            good, bad = (outcomes[s.id] for s in sessions.values())
            assert good.report.passed and good.report.agreed == good.report.tokens
            assert not bad.report.passed and bad.report.outside > 0
            assert good.reported_tx and bad.reported_tx

            honest_record = reputation.record(honest.keys.account.address)
            impostor_record = reputation.record(impostor.keys.account.address)
            assert (honest_record.audits_passed, honest_record.audits_failed) == (1, 0)
            assert (impostor_record.audits_passed, impostor_record.audits_failed) == (0, 1)
            # The evidence is public: the report's calldata holds the record whose keccak
            # the host signed.
            bad_session = sessions[impostor.keys.account.address]
            [signed] = bad_session.transcripts
            assert reputation.audit_reported(keccak(signed.evidence()))
            tx = client.contracts.w3.eth.get_transaction(bad.reported_tx)
            call = reputation.reputation.decode_function_input(tx["input"])[1]
            assert call["record"] == signed.evidence() and call["passed"] is False
            assert TranscriptRecord.decode(call["record"]).model_sha256 == bytes.fromhex(
                devnet.model_sha
            )

            listed = await asyncio.to_thread(fabstir, devnet, "hosts", "--model", MODEL, "--json")
            assert listed.returncode == 0, listed.stderr
            ranked = json.loads(listed.stdout)
            assert [h["address"] for h in ranked] == [
                honest.keys.account.address,
                impostor.keys.account.address,
            ]
            assert ranked[1]["reputation"]["audits_failed"] == 1
            table = await asyncio.to_thread(fabstir, devnet, "hosts", "--model", MODEL)
            assert "audits ok/failed" in table.stdout and "0/1" in table.stdout

            # `fabstir audit` re-checks the stored answers (the host kept them, signed).
            for node, code in ((honest, 0), (impostor, 1)):
                session = sessions[node.keys.account.address]
                await session.close()
                audited = await asyncio.to_thread(
                    fabstir,
                    devnet,
                    "audit",
                    str(session.id),
                    "--model",
                    str(devnet.model_path),
                    "--json",
                )
                assert audited.returncode == code, audited.stderr
                [row] = json.loads(audited.stdout)
                assert row["passed"] is (code == 0) and row["reported_tx"] is None  # once
        finally:
            await client.close()
            await impostor.stop()
            await honest.stop()

    run(main())


def test_a_host_audits_another_hosts_answer_paid_like_a_session(
    devnet: Devnet, impostor_weights: Path
) -> None:
    async def main() -> None:
        auditor = await devnet.start_node(1)
        impostor = await devnet.start_node(2, service=substituted(impostor_weights))
        client = devnet.client(6, audit=AuditPolicy(remote=True, report=False))
        try:
            _, transcript = await signed_answer(client, impostor, 16)
            outcome = await client.audit(transcript)
            assert not outcome.report.passed and outcome.reported_tx is None
            assert auditor.keys.account.address in outcome.report.reason  # never the impostor
            assert auditor.http is not None
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{auditor.http.url}/metrics")).text
            assert "fabstir_audits_run 1.0" in metrics and "fabstir_audits_failed 1.0" in metrics
            await client.close()  # the auditor settles the audit session: exactly the audit
            audit_session = last_session_with(client, auditor)
            billed = transcript.record.audit_tokens
            await asyncio.to_thread(assert_settled_for, client.contracts, audit_session, billed)
        finally:
            await client.close()
            await impostor.stop()
            await auditor.stop()

    run(main())


def test_an_auditor_that_overcharges_is_paid_what_the_client_counts(devnet: Devnet) -> None:
    async def main() -> None:
        honest = await devnet.start_node(1)
        auditor = await devnet.start_node(3, service=OverchargingAuditor)
        client = devnet.client(7, audit=AuditPolicy(remote=True, report=False))
        try:
            _, transcript = await signed_answer(client, honest, 8)
            with pytest.raises(HostError) as caught:
                await client.audit(transcript)
            assert caught.value.code == "bad_accounting"
            # The audit session settles on what the client counted, not on the claim.
            audit_session = last_session_with(client, auditor)
            billed = transcript.record.audit_tokens
            await asyncio.to_thread(assert_settled_for, client.contracts, audit_session, billed)
        finally:
            await client.close()
            await auditor.stop()
            await honest.stop()

    run(main())


def test_a_host_that_signs_with_another_key_is_refused(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(3, service=ForeignSignatureHost)
        client = devnet.client(6)
        try:
            session = await client.open_session(MODEL, host=node.keys.account.address)
            with pytest.raises(HostError) as caught:
                await session.chat(MESSAGES, max_tokens=6, temperature=0).collect()
            assert caught.value.code == "unsigned_transcript"
            assert session.transcripts == [] and session.closed
            # The answer was still paid for: the voucher covers what was counted.
            assert session.last_voucher is not None
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_ratings_are_bound_to_settled_sessions_and_their_clients(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        client = devnet.client(CLIENT)
        try:
            session = await client.open_session(MODEL, host=node.keys.account.address)
            await session.chat(MESSAGES, max_tokens=6, temperature=0).collect()
            early = await asyncio.to_thread(fabstir, devnet, "rate", str(session.id), "5")
            assert early.returncode == 5 and "SessionNotSettled" in early.stderr
            vouched = session.last_voucher
            assert vouched is not None
            await session.close()
            await asyncio.to_thread(
                assert_settled_for, client.contracts, session.id, vouched.cumulative_tokens
            )
            forged = await asyncio.to_thread(
                fabstir, devnet, "rate", str(session.id), "1", key_index=7
            )
            assert forged.returncode == 5 and "NotSessionClient" in forged.stderr
            rated = await asyncio.to_thread(fabstir, devnet, "rate", str(session.id), "4")
            assert rated.returncode == 0, rated.stderr
            again = await asyncio.to_thread(fabstir, devnet, "rate", str(session.id), "5")
            assert again.returncode == 5 and "AlreadyRated" in again.stderr
            bad = await asyncio.to_thread(fabstir, devnet, "rate", str(session.id), "9")
            assert bad.returncode == 2
            record = Reputation(client.contracts).record(node.keys.account.address)
            assert (record.ratings, record.rating_sum, record.mean_rating) == (1, 4, 4.0)
            assert record.sessions >= 1 and record.tokens_served >= vouched.cumulative_tokens

            # The node beats once per epoch while it serves (registered after it started,
            # its first beat waits for the registration).
            assert node.heartbeat is not None
            assert await node.heartbeat.beat()
            beats = Reputation(client.contracts).record(node.keys.account.address).uptime_beats
            assert beats == 1
        finally:
            await client.close()
            await node.stop()

    run(main())
