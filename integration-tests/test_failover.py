"""Mid-stream failover: the serving host is killed in the middle of an answer; the SDK
continues the same answer with the next host. The text equals the reference greedy answer,
no token is paid twice, and both hosts settle exactly what they delivered."""

from __future__ import annotations

import asyncio

from fabstir_devtools.network import ModelSpec

from conftest import SETTLE_TIMEOUT, Devnet, assert_settled_for, run

MODEL = ModelSpec.builtin("smollm2-135m-instruct")
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
LENGTH = 64


def test_failover_continues_the_same_answer_with_the_next_host(devnet: Devnet) -> None:
    devnet.add_model(MODEL)
    first = devnet.start_host(1, model=MODEL)
    second = devnet.start_host(2, model=MODEL)
    first_address, second_address = first.address, second.address

    async def main() -> None:
        client = devnet.client(5)
        try:
            reference = await client.open_session(MODEL.name, host=second_address)
            expected = reference.chat(MESSAGES, max_tokens=LENGTH, temperature=0)
            expected_text = await expected.collect()
            await reference.close()

            doomed = await client.open_session(MODEL.name, host=first_address)
            answer = client.chat(
                MODEL.name, MESSAGES, max_tokens=LENGTH, temperature=0, session=doomed
            )
            pieces = []
            async for piece in answer:
                pieces.append(piece)
                if len(pieces) == 12:
                    await asyncio.to_thread(first.kill)
            assert answer.hosts == [first_address, second_address]
            assert "".join(pieces) == answer.text == expected_text  # no gap, no duplicate
            assert len(answer.token_ids) == LENGTH
            assert answer.gaps_s and answer.gaps_s[0] < 2.0, answer.gaps_s
            print(f"failover gap {answer.gaps_s[0] * 1000:.0f} ms")

            rescue = answer.session
            assert rescue is not None and rescue.host == second_address
            settled = await rescue.close(wait_settlement=SETTLE_TIMEOUT)
            assert settled is not None and settled.tokens == rescue.vouched
            paid_to_first = doomed.vouched
            return_value = (doomed.id, paid_to_first)
        finally:
            await client.close()
        return return_value  # type: ignore[return-value]

    doomed_id, vouched = run(main())  # type: ignore[func-returns-value]
    first.start()  # the killed host comes back and settles from its journal
    contracts = devnet.client(5).contracts
    assert_settled_for(contracts, doomed_id, vouched)
    first.stop()
    second.stop()
