"""How the examples start `llm-sandbox mcp`: the binary from $LLM_SANDBOX_BIN, else the
repository's target/{release,debug}/llm-sandbox, else `llm-sandbox` on PATH."""

import os
import shutil
from pathlib import Path


def server_command():
    """(command, args) of the MCP server."""
    explicit = os.environ.get("LLM_SANDBOX_BIN")
    if explicit:
        return explicit, ["mcp"]
    root = Path(__file__).resolve().parents[2]
    for build in ("release", "debug"):
        exe = root / "target" / build / "llm-sandbox"
        if exe.is_file():
            return str(exe), ["mcp"]
    exe = shutil.which("llm-sandbox")
    if exe:
        return exe, ["mcp"]
    raise SystemExit("llm-sandbox not found: `cargo build`, or set LLM_SANDBOX_BIN")
