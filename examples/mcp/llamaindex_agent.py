"""LlamaIndex + llm-sandbox over MCP (llama-index-tools-mcp).

    pip install -r examples/mcp/requirements.txt
    cargo build
    python examples/mcp/llamaindex_agent.py            # no API key: calls the tool directly
    OPENAI_API_KEY=... python examples/mcp/llamaindex_agent.py   # an agent decides

`llm-sandbox mcp` is started over stdio by BasicMCPClient; McpToolSpec turns its tools
into LlamaIndex FunctionTools. Without an API key the script calls `run_code` itself;
with OPENAI_API_KEY (and `pip install llama-index-llms-openai`) a FunctionAgent gets the
tools and a task.
"""

import asyncio
import os
import sys

from llama_index.tools.mcp import BasicMCPClient, McpToolSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _server import server_command  # noqa: E402


def text_of(output):
    """The text blocks of a tool's output (an MCP CallToolResult in raw_output)."""
    raw = getattr(output, "raw_output", output)
    content = getattr(raw, "content", None)
    if content is None:
        return str(output)
    return "\n".join(getattr(c, "text", f"<{getattr(c, 'type', 'block')}>") for c in content)


async def main():
    command, args = server_command()
    client = BasicMCPClient(command, args=args, timeout=120)
    tools = await McpToolSpec(client=client).to_tool_list_async()
    print("tools:", ", ".join(t.metadata.name for t in tools))
    run_code = next(t for t in tools if t.metadata.name == "run_code")

    if os.environ.get("OPENAI_API_KEY"):
        try:
            from llama_index.core.agent.workflow import FunctionAgent
            from llama_index.llms.openai import OpenAI
        except ImportError:
            raise SystemExit("with a model: pip install llama-index-llms-openai")
        agent = FunctionAgent(
            tools=tools,
            llm=OpenAI(model=os.environ.get("LLM_MODEL", "gpt-4o-mini")),
            system_prompt="You answer by running code with run_code.",
        )
        print(await agent.run("How many primes are there below 10000? Compute it with run_code."))
        return

    # No model: call the tool the way an agent would.
    out = await run_code.acall(
        language="python", code="print(sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, 10000)))"
    )
    print("python:\n" + text_of(out))
    assert "1229" in text_of(out), out

    out = await run_code.acall(language="ruby", code="puts [3, 1, 2].sort.inspect")
    print("ruby:\n" + text_of(out))

    out = await run_code.acall(language="python", code="import time\ntime.sleep(30)", timeout=1)
    print("timeout:\n" + text_of(out))
    assert "timed out" in text_of(out), out

    # A plot comes back as an image block next to the text.
    out = await run_code.acall(
        language="python", code="import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()"
    )
    raw = getattr(out, "raw_output", None)
    images = [c for c in getattr(raw, "content", []) if getattr(c, "type", "") == "image"]
    print(f"plot: {len(images)} image(s)" + ("" if images else " (is matplotlib installed for the sandbox's python?)"))
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
