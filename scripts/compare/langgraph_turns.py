"""The run benchmark's turn, in LangGraph, for a side-by-side comparison.

One turn: the model asks for one calculator call, the tool runs, the model
answers (three steps), each step checkpointed to SQLite, as in
`cargo bench --bench runs`. A prebuilt ReAct agent (`create_react_agent`)
with an in-process fake chat model:

1. instant model: time per turn, one turn at a time (p50 over TURNS turns);
2. a model that takes 1 s per answer: CONCURRENT turns at once, each in a
   thread of its own: wall time (2 s is the floor) and peak RSS.

Prints figures; asserts nothing. Run by scripts/compare-langgraph.
"""

import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.prebuilt import create_react_agent

# create_react_agent moved to `langchain.agents` (another package); the
# graph it builds is the same.
warnings.filterwarnings("ignore", message=".*create_react_agent.*")

TURNS = int(os.environ.get("ORCHESTRA_BENCH_TURNS", "300"))
CONCURRENT = int(os.environ.get("ORCHESTRA_BENCH_CONCURRENT", "1000"))


@tool
def evaluate(expression: str) -> str:
    """Evaluates an arithmetic expression."""
    # The same expression every turn; no eval of model output.
    return {"6*7": "42"}.get(expression.replace(" ", ""), "unsupported")


class ScriptedModel(BaseChatModel):
    """Asks for one calculator call, then answers with its result."""

    delay: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs):
        return self

    def _answer(self, messages):
        last = messages[-1]
        if isinstance(last, ToolMessage):
            message = AIMessage(content=f"The answer is {last.content}.")
        else:
            message = AIMessage(
                content="",
                tool_calls=[{"name": "evaluate", "args": {"expression": "6*7"}, "id": "call_1"}],
            )
        message.usage_metadata = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if self.delay:
            time.sleep(self.delay)
        return self._answer(messages)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        if self.delay:
            await asyncio.sleep(self.delay)
        return self._answer(messages)


async def one_at_a_time(path: str) -> list:
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        agent = create_react_agent(ScriptedModel(), [evaluate], checkpointer=saver)
        samples = []
        for i in range(TURNS + 20):
            config = {"configurable": {"thread_id": f"t{i}"}}
            start = time.perf_counter()
            result = await agent.ainvoke({"messages": [("user", "calc")]}, config)
            elapsed = time.perf_counter() - start
            assert result["messages"][-1].content == "The answer is 42.", result
            if i >= 20:
                samples.append(elapsed)
        return samples


async def concurrent(path: str) -> float:
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        agent = create_react_agent(ScriptedModel(delay=1.0), [evaluate], checkpointer=saver)

        async def turn(i):
            config = {"configurable": {"thread_id": f"c{i}"}}
            result = await agent.ainvoke({"messages": [("user", "calc")]}, config)
            assert result["messages"][-1].content == "The answer is 42.", result

        start = time.perf_counter()
        await asyncio.gather(*(turn(i) for i in range(CONCURRENT)))
        return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        samples = asyncio.run(one_at_a_time(os.path.join(tmp, "one.sqlite")))
        samples.sort()
        p50 = statistics.median(samples) * 1e3
        p99 = samples[int((len(samples) - 1) * 0.99)] * 1e3
        wall = asyncio.run(concurrent(os.path.join(tmp, "many.sqlite")))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from importlib.metadata import version

    print(f"langgraph {version('langgraph')} (Python {sys.version.split()[0]}), SQLite checkpoints:")
    print(f"langgraph: one turn at a time: p50 {p50:.2f} ms, p99 {p99:.2f} ms per turn ({TURNS} turns)")
    print(f"langgraph: {CONCURRENT} concurrent turns, 1 s per model answer (floor 2 s): all done in {wall:.2f} s; peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
