"""LangChain + llm-sandbox over MCP (langchain-mcp-adapters).

    pip install -r examples/mcp/requirements.txt
    cargo build
    python examples/mcp/langchain_agent.py            # no API key: calls the tool directly
    OPENAI_API_KEY=... python examples/mcp/langchain_agent.py   # an agent decides

`llm-sandbox mcp` is started over stdio by the adapter; its `run_code` tool becomes a
LangChain tool. Without an API key the script calls that tool itself (what an agent would
do); with OPENAI_API_KEY (and `pip install langchain langchain-openai`) a model gets the
tool and a task. The server's settings come from LLM_SANDBOX_MCP_* variables (backend,
limits, ...), passed through here.
"""

import asyncio
import os
import sys

from langchain_mcp_adapters.client import MultiServerMCPClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _server import server_command  # noqa: E402


def text_of(result):
    """The text of a tool result (a string, or a list of content blocks)."""
    if isinstance(result, str):
        return result
    parts = []
    for block in result if isinstance(result, list) else [result]:
        if isinstance(block, dict):
            parts.append(block.get("text", f"<{block.get('type', 'block')}>"))
        else:
            parts.append(str(block))
    return "\n".join(parts)


async def main():
    command, args = server_command()
    client = MultiServerMCPClient(
        {
            "sandbox": {
                "transport": "stdio",
                "command": command,
                "args": args,
                "env": {k: v for k, v in os.environ.items() if k.startswith("LLM_SANDBOX") or k == "PATH"},
            }
        }
    )
    tools = await client.get_tools()
    print("tools:", ", ".join(t.name for t in tools))
    run_code = next(t for t in tools if t.name == "run_code")

    if os.environ.get("OPENAI_API_KEY"):
        try:
            from langchain.agents import create_agent
        except ImportError:
            raise SystemExit("with a model: pip install langchain langchain-openai")
        agent = create_agent(os.environ.get("LLM_MODEL", "openai:gpt-4o-mini"), tools)
        task = "What is the 30th Fibonacci number? Compute it with run_code in python, then answer."
        out = await agent.ainvoke({"messages": [{"role": "user", "content": task}]})
        print(out["messages"][-1].content)
        return

    # No model: call the tool the way an agent would.
    result = await run_code.ainvoke(
        {"language": "python", "code": "a, b = 0, 1\nfor _ in range(30):\n    a, b = b, a + b\nprint(a)"}
    )
    print("python:\n" + text_of(result))
    assert "832040" in text_of(result), result

    result = await run_code.ainvoke(
        {"language": "javascript", "code": "console.log(JSON.stringify({sum: [1, 2, 3].reduce((a, b) => a + b)}))"}
    )
    print("javascript:\n" + text_of(result))
    assert '{"sum":6}' in text_of(result), result

    # A failing program is a result the model can read (the adapter raises ToolException
    # for results with isError set, which an agent turns into a message for the model).
    try:
        result = await run_code.ainvoke({"language": "python", "code": "import sys\nsys.exit('bad input')"})
        failure = text_of(result)
    except Exception as e:  # langchain_core.tools.ToolException
        failure = str(e)
    print("failing program:\n" + failure)
    assert "exit code 1" in failure and "bad input" in failure, failure
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
