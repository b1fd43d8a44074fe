"""Audits as a service: a host re-runs another host's answer on the model it serves and
judges it (:mod:`fabstir_sdk.audit`), inside a paid session like a prompt.

The auditor loads its own llama.cpp context of the served GGUF (the weights are memory-mapped,
so they are shared with the engine's) the first time it is asked, and runs beside the engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fabstir_sdk.audit import AuditError, Auditor, AuditReport
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.transcripts import TranscriptRecord

#: The longest transcript (prompt + completion tokens) a host audits.
MAX_AUDIT_TOKENS = 8192


class AuditRefused(Exception):
    """An audit the host will not run; ``code`` is the wire error's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AuditService:
    def __init__(self, model_path: Path, model_sha256: bytes, n_threads: int) -> None:
        self.model_path = model_path
        self.model_sha256 = model_sha256
        self.n_threads = n_threads
        self.audited = 0
        self.failed = 0  # audited answers that failed
        self._auditor: Auditor | None = None

    def parse(self, data: bytes) -> TranscriptRecord:
        """The record to audit, refused unless this host can judge it."""
        try:
            record = TranscriptRecord.decode(data)
        except StorageError as exc:
            raise AuditRefused("invalid_request", f"not a transcript record: {exc}") from None
        if record.model_sha256 != self.model_sha256:
            raise AuditRefused("wrong_model", "the answer is of a model this host does not serve")
        if record.audit_tokens > MAX_AUDIT_TOKENS:
            raise AuditRefused(
                "context_length_exceeded",
                f"the transcript has {record.audit_tokens} tokens; this host audits up to "
                f"{MAX_AUDIT_TOKENS}",
            )
        return record

    async def audit(self, record: TranscriptRecord) -> AuditReport:
        if self._auditor is None:
            self._auditor = Auditor(
                self.model_path, model_sha256=self.model_sha256, n_threads=self.n_threads
            )
        try:
            report = await asyncio.to_thread(self._auditor.audit, record)
        except AuditError as exc:
            raise AuditRefused("invalid_request", str(exc)) from None
        self.audited += 1
        self.failed += not report.passed
        return report

    def close(self) -> None:
        if self._auditor is not None:
            self._auditor.close()
