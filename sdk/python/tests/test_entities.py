"""Durable entities from a Python agent against a real ``legato up``: an
agent's memory of a customer outlives each run, and its calls apply once
per task however often the task is tried."""

from __future__ import annotations

from typing import Any

from conftest import Legato
from test_worker import serving

from legato_agent import EntityOperationError, RetryableError, Task


async def remember(task: Task) -> dict[str, Any]:
    memory = task.entity("customer", task.input["customer"])
    # A read is the state now; a step keeps what the first attempt read.
    before = await task.step("before", lambda: memory.read("/requests"))
    visit = await memory.call("visit", {"op": "increment", "path": "/visits"})
    await memory.signal(
        "note", {"op": "append", "path": "/requests", "value": task.input["request"], "cap": 5}
    )
    if task.attempt == 1:
        raise RetryableError("the line dropped after the visit was counted")
    refused = None
    try:
        await memory.call("overdraw", {"op": "increment", "path": "/credit", "by": -1, "min": 0})
    except EntityOperationError as e:
        refused = str(e)
    return {"before": before, "visit": visit, "refused": refused}


async def test_a_python_agents_memory_outlives_runs_and_its_calls_apply_once(
    legato: Legato,
) -> None:
    await legato.put_agent("py-memory", leaseMs=5_000)
    await legato.register(
        {
            "name": "py-memory",
            "version": 1,
            "steps": [
                {
                    "id": "remember",
                    "agent": "py-memory",
                    "input": "${{ input }}",
                    "retry": {"max_attempts": 2, "initial_interval_ms": 50},
                }
            ],
            "output": "${{ steps.remember.output }}",
        }
    )
    customer = "jane@example.com"
    async with serving(legato, {"py-memory": remember}):
        first = await legato.start("py-memory", {"customer": customer, "request": "csv export"})
        done = await legato.wait_for(first, "Completed")
        assert done["output"]["before"] is None
        assert done["output"]["visit"] == 1, "counted once over two attempts"
        assert "below the minimum 0" in done["output"]["refused"]
        second = await legato.start("py-memory", {"customer": customer, "request": "totals"})
        done = await legato.wait_for(second, "Completed")
        assert done["output"]["before"] == ["csv export"]
        assert done["output"]["visit"] == 2
    response = await legato.http.get(f"/api/v1/entities/customer/{customer}")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == {"visits": 2, "requests": ["csv export", "totals"]}


async def keep_memory(task: Task) -> dict[str, Any]:
    """Custom operation ``remember`` of type ``py-customer``: given the state
    and the operation's input, the new state and the answer."""
    state = task.input["state"] or {"requests": [], "remembered": 0}
    request = task.input["input"]["request"]
    requests = [*state["requests"], request][-3:]
    remembered = state["remembered"] + 1
    return {
        "state": {"requests": requests, "remembered": remembered},
        "answer": remembered,
    }


async def test_a_python_agent_is_an_entity_types_logic_one_operation_at_a_time(
    legato: Legato,
) -> None:
    await legato.put_agent("py-keeper", leaseMs=5_000)
    await legato.register(
        {
            "name": "py-remember-op",
            "version": 1,
            "steps": [{"id": "keep", "agent": "py-keeper", "input": "${{ input }}"}],
            "output": "${{ steps.keep.output }}",
        }
    )
    response = await legato.http.put(
        "/api/v1/entity-types/py-customer",
        json={
            "state_schema": {
                "type": "object",
                "properties": {"requests": {"type": "array", "maxItems": 3}},
            },
            "operations": {
                "remember": {
                    "workflow": "py-remember-op",
                    "input_schema": {"type": "object", "required": ["request"]},
                }
            },
        },
    )
    assert response.status_code == 201, response.text
    await legato.register(
        {
            "name": "py-remember",
            "version": 1,
            "steps": [
                {
                    "id": "remember",
                    "entity": {
                        "type": "py-customer",
                        "id": "${{ input.customer }}",
                        "op": "remember",
                        "input": {"request": "${{ input.request }}"},
                    },
                }
            ],
            "output": "${{ steps.remember.output }}",
        }
    )
    async with serving(legato, {"py-keeper": keep_memory}):
        runs = [
            await legato.start("py-remember", {"customer": "kim", "request": f"r{n}"})
            for n in range(8)
        ]
        answers = sorted([(await legato.wait_for(run, "Completed"))["output"] for run in runs])
    # Each operation saw the state the one before left: no two saw one state.
    assert answers == list(range(1, 9))
    response = await legato.http.get("/api/v1/entities/py-customer/kim")
    state = response.json()["state"]
    assert state["remembered"] == 8
    assert len(state["requests"]) == 3
