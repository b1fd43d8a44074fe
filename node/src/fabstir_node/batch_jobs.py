"""Batch jobs: OpenAI Batch files of chat completions, run beside live sessions.

Each request is validated as the node's own ``/v1/chat/completions`` validates it; a bad line
gets an error line in the output and costs nothing, as in OpenAI's Batch API. A batch's
requests are sequences in the engine's batch like any session's, but sessions come first: a
batch takes at most half the engine's slots, and its next request starts only while a slot is
free and nobody waits for one, so a session never queues behind a batch.
The payment asked is the tokens used (prompt + completion, counted by the host's tokenizer,
which the registry pins and the client can count with) at the host's price, at most the job's
maximum.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import ValidationError

from fabstir_node.api import ChatRequest
from fabstir_node.inference import Engine, EngineError, Finished
from fabstir_node.jobs import Outcome
from fabstir_sdk import openai_format as oai
from fabstir_sdk.batch import (
    BatchAnswer,
    BatchFormatError,
    BatchRequest,
    batch_payment,
    parse_input,
    parse_output,
    render_output,
)
from fabstir_sdk.contracts.jobs import OnchainJob

#: Seconds between looks at whether the engine has a slot for the next batch request.
IDLE_POLL = 0.1


class BatchExecutor:
    def __init__(
        self,
        model_id: bytes,
        model_name: str,
        engine: Engine,
        prices: dict[str, int],
        *,
        max_tokens_default: int = 512,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.model_id = model_id
        self.model_name = model_name
        self.engine = engine
        self.prices = {t.lower(): p for t, p in prices.items()}
        self.max_tokens_default = max_tokens_default
        self._busy = busy or (lambda: engine.queue_depth >= engine.parallel)
        self._slots = asyncio.Semaphore(max(1, engine.parallel // 2))

    def refuses(self, job: OnchainJob, data: bytes) -> str | None:
        if job.proof_required:
            return "a batch job cannot be proven"
        if job.token.lower() not in self.prices:
            return f"payment token {job.token} is not accepted"
        try:
            parse_input(data)
        except BatchFormatError as exc:
            return f"the input is not a batch file: {exc}"
        return None

    async def run(self, job: OnchainJob, data: bytes) -> Outcome:
        answers = await asyncio.gather(*(self._in_turn(r) for r in parse_input(data)))
        return self._outcome(job, answers, render_output(job.id, answers))

    async def _in_turn(self, request: BatchRequest) -> BatchAnswer:
        async with self._slots:
            while self._busy():  # live sessions first
                await asyncio.sleep(IDLE_POLL)
            return await self._answer(request)

    def resumed(self, job: OnchainJob, result: bytes) -> Outcome:
        return self._outcome(job, parse_output(result), result)

    def _outcome(self, job: OnchainJob, answers: list[BatchAnswer], result: bytes) -> Outcome:
        tokens = sum(sum(a.usage) for a in answers)
        payment = batch_payment(tokens, self.prices[job.token.lower()], job.max_payment)
        return Outcome(result, payment)

    async def _answer(self, request: BatchRequest) -> BatchAnswer:
        try:
            body = ChatRequest.model_validate({**request.body, "model": self.model_name})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return _error(request, f"{where}: {first['msg']}")
        try:
            prompt = self.engine.chat_prompt([m.as_template_input() for m in body.messages])
            text: list[str] = []
            ids: list[int] = []
            async for event in self.engine.generate(prompt, body.sampling(self.max_tokens_default)):
                if isinstance(event, Finished):
                    usage = oai.usage(event.usage.prompt_tokens, event.usage.completion_tokens)
                    ident = oai.completion_id()
                    answer = oai.response(
                        ident, self.model_name, "".join(text), event.finish_reason, usage
                    )
                    # The completion's token ids let the client count what it pays for.
                    answer[oai.EXTENSION] = {"completion_ids": ids}
                    return BatchAnswer(request.custom_id, answer)
                text.append(event.text)
                ids.extend(event.token_ids)
        except EngineError as exc:
            return _error(request, str(exc))
        raise AssertionError("generate ended without Finished")


def _error(request: BatchRequest, message: str) -> BatchAnswer:
    return BatchAnswer(request.custom_id, None, {"code": "invalid_request", "message": message})
