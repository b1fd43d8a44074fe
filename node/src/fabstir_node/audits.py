"""Audits as a service: a host re-runs another host's answer on the model it serves and
judges it (:mod:`fabstir_sdk.audit`), inside a paid session like a prompt.

The audit's prefill is a sequence in the engine's batch like any session's (no second llama.cpp
context): it shares the slots and the KV cache, so auditing answers of one conversation in turn
evaluates only what each adds, and an audit never stalls the sessions for more than a chunk.
"""

from __future__ import annotations

import time
from typing import Any

from fabstir_node.inference import Engine, EngineError
from fabstir_sdk.audit import GREEDY_TOLERANCE, AuditError, AuditReport, Judge, check_auditable
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.transcripts import TranscriptRecord


class AuditRefused(Exception):
    """An audit the host will not run; ``code`` is the wire error's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AuditService:
    def __init__(self, engine: Engine, model_sha256: bytes) -> None:
        self.engine = engine
        self.model_sha256 = model_sha256
        self.audited = 0
        self.failed = 0  # audited answers that failed

    def parse(self, data: bytes) -> TranscriptRecord:
        """The record to audit, refused unless this host can judge it."""
        try:
            record = TranscriptRecord.decode(data)
        except StorageError as exc:
            raise AuditRefused("invalid_request", f"not a transcript record: {exc}") from None
        if record.model_sha256 != self.model_sha256:
            raise AuditRefused("wrong_model", "the answer is of a model this host does not serve")
        if record.audit_tokens > self.engine.n_ctx:
            raise AuditRefused(
                "context_length_exceeded",
                f"the transcript has {record.audit_tokens} tokens; this host audits up to "
                f"{self.engine.n_ctx}",
            )
        return record

    async def audit(self, record: TranscriptRecord) -> AuditReport:
        try:
            check_auditable(record, self.model_sha256)
        except AuditError as exc:
            raise AuditRefused("invalid_request", str(exc)) from None
        tokens = [*record.prompt_ids, *record.completion_ids]
        try:
            self.engine.check_ids(tokens)  # the last one too, which scoring does not evaluate
        except EngineError as exc:
            raise AuditRefused(exc.kind, str(exc)) from None
        judge = Judge(record, GREEDY_TOLERANCE)
        first = len(record.prompt_ids) - 1  # its logits predict the first completion token
        sampler = judge.sampler()

        def visit(position: int, logits: Any, ctx: Any, row: int) -> None:
            replayed = sampler.sample(ctx, row) if sampler is not None else None
            judge.check(position - first, tokens[position + 1], logits, replayed)

        started = time.perf_counter()
        try:
            if record.completion_ids:
                await self.engine.score(tokens[:-1], first, visit)
        except EngineError as exc:
            raise AuditRefused(exc.kind, str(exc)) from None
        finally:
            if sampler is not None:
                sampler.close()
        report = judge.report(record.commitment(), time.perf_counter() - started)
        self.audited += 1
        self.failed += not report.passed
        return report
