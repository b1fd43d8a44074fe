"""Auditing an answer by re-execution: is this what the pinned model says?

Checking a transcript costs one prefill over prompt + completion, far less than generating it
(the completion's tokens are evaluated in batches, not one by one). The auditor loads the
pinned GGUF with llama.cpp, decodes the transcript's tokens with logits kept only for the
positions that predict a completion token, and checks each completion token against the
model's own distribution there:

* **greedy** (temperature 0): the token must be the argmax, within :data:`GREEDY_TOLERANCE`
  logits, and no more than :data:`GREEDY_MAX_FLIPS` of the tokens may differ from it at all.
  llama.cpp's logits differ slightly between an incremental decode (how the host generated)
  and a batched prefill (how we check), which flips near-ties; both limits are measured by
  ``bench/audit.py``, not guessed.
* **sampled**: the host's sampler (llama.cpp's: top-p on the raw distribution, then the
  temperature, then a seeded draw) can only pick a token inside the top-p set, so one outside
  it (beyond the tolerance) fails. Beyond that the verdict is statistical: the z-score of the
  tokens' log-probabilities under the distribution the host drew from is near 0 for an
  honest sample and negative for another model's text; below :data:`Z_FAIL`, on answers long
  enough to judge (:data:`Z_MIN_TOKENS`), the answer fails. With a seed in the record we also
  replay the very sampler with that seed and report how many tokens come out again; that
  share is not part of the verdict, because batched and one-token decodes differ by up to the
  tolerance, enough to move a draw across a boundary (``bench/audit.py`` measures both).

Answers served from the host's cache are not audited: their tokens were generated for another
prompt, and the client asked for that.
"""

from __future__ import annotations

import ctypes
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fabstir_sdk.digests import file_sha256
from fabstir_sdk.errors import FabstirError, UsageError
from fabstir_sdk.sampling import Sampler
from fabstir_sdk.transcripts import SignedTranscript, TranscriptRecord

__all__ = [
    "GREEDY_MAX_FLIPS",
    "GREEDY_TOLERANCE",
    "AuditError",
    "AuditOutcome",
    "AuditPolicy",
    "AuditReport",
    "Auditor",
    "Judge",
    "TokenCheck",
    "check_auditable",
]

#: Logits by which a greedy answer's token may trail the auditor's argmax. ``bench/audit.py``
#: measured at most 0.504 between the host's generation and the audit's prefill (SmolLM2-135M
#: Q4_1; hosts on 1 and 2 threads, auditors on 1 and 2 threads with batches of 512 and 32):
#: llama.cpp's one-token and batched kernels round differently. Twice that leaves room for
#: other machines' kernels; a cheaper quantisation's tokens trail by 1.3 to 4 logits.
GREEDY_TOLERANCE = 1.0
#: ... and at most this share of its tokens (and at least 3) may differ from the argmax at all.
#: Rounding flips near-ties: ``bench/audit.py`` saw at most 6 of 96 honest tokens (6.25%) flip;
#: a host that answered another prompt or a truncated context flips many more, each within
#: the tolerance.
GREEDY_MAX_FLIPS = 0.12
#: A sampled answer fails when its log-probability z-score is below this (an honest sample's
#: is about normal, below -4 once in 30,000 answers if exactly so; ``bench/audit.py`` saw no
#: honest answer below -2.5, and most of a cheaper quantisation's below -4) ...
Z_FAIL = -4.0
#: ... and it has at least this many tokens (fewer say too little either way).
Z_MIN_TOKENS = 32
_WORST = 5  # token checks kept in a report


class AuditError(FabstirError):
    """The transcript cannot be audited with this model (another model, ids out of range)."""


@dataclass(frozen=True)
class TokenCheck:
    position: int  # index in the completion
    token: int  # what the host sent
    expected: int  # the model's own choice: argmax, or the replayed draw
    gap: float  # logits by which the host's token trails the argmax (0 when it is the argmax)


@dataclass(frozen=True)
class AuditReport:
    transcript_hash: bytes
    mode: str  # "greedy" or "sampled"
    tokens: int  # completion tokens checked
    agreed: int  # tokens equal to the model's own choice (argmax, or the seeded replay)
    outside: int  # tokens beyond the tolerance (greedy) or outside the top-p set (sampled)
    passed: bool
    reason: str
    seconds: float
    z_score: float | None = None  # sampled answers only
    worst: tuple[TokenCheck, ...] = field(default=())

    @property
    def agreement(self) -> float:
        return self.agreed / self.tokens if self.tokens else 1.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["transcript_hash"] = "0x" + self.transcript_hash.hex()
        data["agreement"] = round(self.agreement, 6)
        return data


@dataclass(frozen=True)
class AuditPolicy:
    """How a :class:`~fabstir_sdk.client.FabstirClient` audits the answers it receives.

    Off by default for interactive use (an audit takes a CPU or GPU for a fraction of the
    generation time). ``share`` of the answers are audited in the background; a failure is
    reported to the ReputationSystem with the signed transcript as public evidence (which
    publishes that answer's prompt) unless ``report`` is off; ``report_passes`` reports passes
    too. ``model_path`` is the pinned GGUF; by default an installed catalogue model whose
    sha256 is the pinned one. ``remote`` has another host serving the model run them instead
    (a session with it, each audit billed as the answer's prompt + completion tokens)."""

    share: float = 0.0
    model_path: Path | None = None
    report: bool = True
    report_passes: bool = False
    n_threads: int | None = None
    remote: bool = False  # have another host run the audits, paid like a session

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise UsageError("the audited share is between 0 and 1")

    def picks(self) -> bool:
        """Whether to audit the next answer: at random, ``share`` of them."""
        return random.random() < self.share


@dataclass(frozen=True)
class AuditOutcome:
    session_id: int
    report: AuditReport
    reported_tx: str | None = None  # the ReputationSystem report, when one was sent


class Auditor:
    """The pinned model, loaded once, re-running transcripts (one at a time; thread-safe)."""

    def __init__(
        self,
        model_path: Path,
        *,
        model_sha256: bytes | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        tolerance: float = GREEDY_TOLERANCE,
    ) -> None:
        self.model_path = Path(model_path)
        self.model_sha256 = model_sha256 or file_sha256(self.model_path)
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.tolerance = tolerance
        self._llm: Any = None
        self._n_ctx = 0
        self._lock = threading.Lock()

    def audit(self, transcript: SignedTranscript | TranscriptRecord) -> AuditReport:
        """Re-run ``transcript`` (blocking: call it in a thread) and judge it."""
        record = transcript.record if isinstance(transcript, SignedTranscript) else transcript
        check_auditable(record, self.model_sha256)
        with self._lock:
            llm = self._load(record.audit_tokens)  # once: not part of an audit's time
            started = time.perf_counter()
            judge = Judge(record, self.tolerance)
            if record.completion_ids:
                self._prefill(llm, record, judge)
            seconds = time.perf_counter() - started
        return judge.report(record.commitment(), seconds)

    def close(self) -> None:
        with self._lock:
            self._llm = None

    # ----------------------------------------------------------------- llama.cpp

    def _load(self, n_tokens: int) -> Any:
        if self._llm is not None and n_tokens <= self._n_ctx:
            return self._llm
        from llama_cpp import Llama

        from fabstir_sdk.tokenizer import LLAMA_LOAD_LOCK

        n_ctx = max(2048, 1 << (n_tokens - 1).bit_length())
        kwargs: dict[str, Any] = {"n_threads": self.n_threads} if self.n_threads else {}
        self._llm = None
        with LLAMA_LOAD_LOCK:
            self._llm = Llama(
                model_path=str(self.model_path),
                n_ctx=n_ctx,
                n_batch=min(self.n_batch, n_ctx),
                n_threads_batch=self.n_threads,
                verbose=False,
                **kwargs,
            )
        self._n_ctx = n_ctx
        return self._llm

    def _prefill(self, llm: Any, record: TranscriptRecord, judge: Judge) -> None:
        import llama_cpp
        import numpy as np

        tokens = [*record.prompt_ids, *record.completion_ids]
        n_vocab = llm.n_vocab()
        if any(not 0 <= t < n_vocab for t in tokens):
            raise AuditError("the transcript has token ids outside the model's vocabulary")
        ctx = llm._ctx.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        sampler = judge.sampler()
        first = len(record.prompt_ids) - 1  # its logits predict the first completion token
        last = len(tokens) - 1  # the final token predicts nothing we check
        n_batch = min(self.n_batch, self._n_ctx)
        batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        try:
            for start in range(0, last, n_batch):
                chunk = tokens[start : min(start + n_batch, last)]
                batch.n_tokens = len(chunk)
                for j, token in enumerate(chunk):
                    batch.token[j] = token
                    batch.pos[j] = start + j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = start + j >= first
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise AuditError("llama.cpp could not decode the transcript")
                for j in range(max(0, first - start), len(chunk)):
                    ptr = llama_cpp.llama_get_logits_ith(ctx, j)
                    logits = np.ctypeslib.as_array(
                        ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
                    )
                    replayed = sampler.sample(ctx, j) if sampler is not None else None
                    judge.check(start + j - first, tokens[start + j + 1], logits, replayed)
        finally:
            llama_cpp.llama_batch_free(batch)
            if sampler is not None:
                sampler.close()


def check_auditable(record: TranscriptRecord, model_sha256: bytes) -> None:
    """Raise :class:`AuditError` unless ``record`` can be judged by re-running ``model_sha256``."""
    if record.model_sha256 != model_sha256:
        raise AuditError(
            f"the answer names model {record.model_sha256.hex()[:16]}..., this auditor "
            f"runs {model_sha256.hex()[:16]}..."
        )
    if record.from_cache:
        raise AuditError("an answer served from the host's cache is not audited")
    if not record.prompt_ids:
        raise AuditError("the transcript has no prompt")


class Judge:
    """Per-token checks and the verdict for one record: feed it the logits at every position
    that predicts a completion token (:meth:`check`), in order, then ask for the :meth:`report`."""

    def __init__(self, record: TranscriptRecord, tolerance: float) -> None:
        sampling = record.sampling
        self.temperature = float(sampling.get("temperature", 1.0))
        self.top_p = float(sampling.get("top_p", 1.0))
        self.seed = sampling.get("seed")
        self.greedy = self.temperature <= 0
        self.tolerance = tolerance
        self.tokens = len(record.completion_ids)
        self.agreed = 0
        self.outside = 0
        self.z_sum = 0.0
        self.z_var = 0.0
        self.worst: list[TokenCheck] = []

    def sampler(self) -> Sampler | None:
        """The host's own sampler with the answer's seed, when it can be replayed."""
        if self.greedy or self.seed is None:
            return None
        return Sampler(self.temperature, self.top_p, int(self.seed))

    def check(self, position: int, token: int, logits: Any, replayed: int | None) -> None:
        import numpy as np

        best = int(np.argmax(logits))
        gap = float(logits[best] - logits[token])
        if self.greedy:
            self.agreed += token == best
            bad = gap > self.tolerance
        else:
            self.agreed += replayed == token if replayed is not None else token == best
            bad = self._sampled(logits, token)
        self.outside += bad
        expected = best if replayed is None else replayed
        if token != expected or bad:
            self.worst.append(TokenCheck(position, token, expected, gap))
            self.worst.sort(key=lambda c: -c.gap)
            del self.worst[_WORST:]

    def _sampled(self, logits: Any, token: int) -> bool:
        """Whether ``token`` lies outside the top-p set; adds its log-probability to the z-score."""
        import numpy as np

        raw = logits.astype(np.float64)
        probs = np.exp(raw - raw.max())
        probs /= probs.sum()
        above = float(probs[raw > raw[token] + self.tolerance].sum())
        outside = self.top_p < 1.0 and above >= self.top_p
        # The host drew from the top-p set, re-weighted by the temperature.
        order = np.argsort(-raw)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
        if not (keep == token).any():
            keep = np.append(keep, token)
        scaled = raw[keep] / self.temperature
        log_total = float(scaled.max())
        log_total += math.log(float(np.exp(scaled - log_total).sum()))
        logq = scaled - log_total
        q = np.exp(logq)
        mean = float((q * logq).sum())
        self.z_var += max(float((q * logq * logq).sum()) - mean * mean, 0.0)
        self.z_sum += float(raw[token] / self.temperature - log_total) - mean
        return outside

    def report(self, transcript_hash: bytes, seconds: float) -> AuditReport:
        n, z = self.tokens, None
        if self.greedy:
            flips, allowed = n - self.agreed, max(3, int(GREEDY_MAX_FLIPS * n))
            passed = self.outside == 0 and flips <= allowed
            reason = (
                f"{self.outside} of {n} tokens are not the model's greedy choice"
                if self.outside
                else f"{flips} of {n} tokens differ from the model's argmax (at most "
                f"{allowed} may, by rounding)"
                if flips > allowed
                else f"all {n} tokens are the model's argmax within {self.tolerance} logits"
            )
        else:
            z = self.z_sum / math.sqrt(self.z_var) if self.z_var > 0 else 0.0
            if self.outside:
                passed, reason = False, f"{self.outside} of {n} tokens lie outside the top-p set"
            elif n >= Z_MIN_TOKENS and z < Z_FAIL:
                passed, reason = False, f"the tokens are improbable under the model (z = {z:.1f})"
            else:
                passed, reason = True, f"every token is inside the top-p set (z = {z:.1f})"
            if self.seed is not None:
                reason += f"; {self.agreed} of {n} replay (seed {self.seed})"
        return AuditReport(
            transcript_hash,
            "greedy" if self.greedy else "sampled",
            n,
            self.agreed,
            self.outside,
            passed,
            reason,
            seconds,
            z_score=z,
            worst=tuple(self.worst),
        )
