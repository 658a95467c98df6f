"""End-to-end test of `llm-sandbox mcp` with the official MCP Python client (PyPI `mcp`).

    python tests/mcp/client_test.py BINARY [--backend native] [--require-plots]

Spawns the server over stdio, initialises, lists the tools and calls them. Exits 0 when
every check passed, 1 with the failures listed otherwise. Run by tests/mcp.rs.
"""

import argparse
import asyncio
import base64
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

PNG = b"\x89PNG\r\n\x1a\n"
failures = []
notes = []


def check(cond, what, detail=""):
    status = "ok  " if cond else "FAIL"
    print(f"{status} {what}" + (f": {detail}" if detail and not cond else ""), flush=True)
    if not cond:
        failures.append(f"{what}: {detail}")


def is_error(result):
    # mcp 2.x names it is_error; 1.x isError.
    v = getattr(result, "is_error", None)
    return v if v is not None else getattr(result, "isError", None)


def structured(result):
    v = getattr(result, "structured_content", None)
    return v if v is not None else getattr(result, "structuredContent", None)


def text_of(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def images_of(result):
    out = []
    for c in result.content:
        if getattr(c, "type", "") == "image":
            mime = getattr(c, "mime_type", None) or getattr(c, "mimeType", None)
            out.append((mime, base64.b64decode(c.data)))
    return out


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--require-plots", action="store_true")
    args = ap.parse_args()

    env = dict(os.environ)
    env.update(
        {
            "LLM_SANDBOX_MCP_BACKEND": args.backend,
            "LLM_SANDBOX_MCP_MAX_OUTPUT": "4KiB",
            "LLM_SANDBOX_MCP_TIMEOUT": "10s",
            "LLM_SANDBOX_MCP_MAX_TIMEOUT": "20s",
        }
    )
    params = StdioServerParameters(command=args.binary, args=["mcp"], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            info = getattr(init, "server_info", None) or getattr(init, "serverInfo")
            check(info.name == "llm-sandbox", "initialize names the server", repr(info))

            tools = (await s.list_tools()).tools
            names = sorted(t.name for t in tools)
            check(names == ["list_languages", "run_code"], "tools listed", repr(names))
            run_code = next(t for t in tools if t.name == "run_code")
            schema = getattr(run_code, "input_schema", None) or getattr(run_code, "inputSchema")
            props = set(schema.get("properties", {}))
            check(
                {"code", "language", "libraries", "timeout", "stdin"} <= props,
                "run_code's schema has code, language, libraries, timeout, stdin",
                repr(schema),
            )
            check(
                set(schema.get("required", [])) == {"code", "language"},
                "code and language are required",
                repr(schema.get("required")),
            )

            async def run(**kw):
                return await s.call_tool("run_code", kw)

            r = await s.call_tool("list_languages", {})
            t = text_of(r)
            check(not is_error(r) and "python" in t and "javascript" in t, "list_languages", t)

            # python
            r = await run(language="python", code="import sys\nprint('hello from', sys.version_info[0])")
            st = structured(r) or {}
            check(not is_error(r), "python runs", text_of(r))
            check("hello from 3" in text_of(r), "python's stdout comes back", text_of(r))
            check(st.get("exit_code") == 0 and st.get("stdout") == "hello from 3\n", "structured result", repr(st))
            check("duration" in text_of(r) and isinstance(st.get("duration_ms"), int), "timing", text_of(r))
            check(isinstance(st.get("cpu_ms"), int) and "cpu:" in text_of(r), "cpu figure", repr(st))

            # javascript
            r = await run(language="javascript", code="console.log([1,2,3].map(x => x * 2).join(','))")
            check(not is_error(r) and "2,4,6" in text_of(r), "javascript runs", text_of(r))

            # bash and c (other languages)
            r = await run(language="bash", code="echo $((6 * 7))")
            check(not is_error(r) and "42" in text_of(r), "bash runs", text_of(r))
            r = await run(language="c", code='#include <stdio.h>\nint main(void){printf("c says %d\\n", 7*6);return 0;}')
            check(not is_error(r) and "c says 42" in text_of(r), "c compiles and runs", text_of(r))

            # stdin
            r = await run(language="python", code="print(input()[::-1])", stdin="sandbox\n")
            check("xobdnas" in text_of(r), "stdin reaches the program", text_of(r))

            # a failing program: stderr and exit code
            r = await run(language="python", code="import sys\nsys.stderr.write('boom: bad input\\n')\nsys.exit(3)")
            st = structured(r) or {}
            check(is_error(r) is True, "a failing program is an error result", repr(r))
            check("exit code 3" in text_of(r) and "boom: bad input" in text_of(r), "its stderr and exit code", text_of(r))
            check(st.get("exit_code") == 3 and "boom" in st.get("stderr", ""), "structured exit code and stderr", repr(st))

            # an exception
            r = await run(language="python", code="raise ValueError('nope')")
            check(is_error(r) and "ValueError: nope" in text_of(r), "a traceback comes back", text_of(r))

            # a compile error
            r = await run(language="c", code="int main(void) { return x; }")
            check(is_error(r) and "compilation failed" in text_of(r) and "x" in text_of(r), "a compile error", text_of(r))

            # a timeout returns promptly and says so
            t0 = time.monotonic()
            r = await run(language="python", code="import time\nprint('start', flush=True)\ntime.sleep(60)", timeout=1)
            took = time.monotonic() - t0
            st = structured(r) or {}
            check(is_error(r) is True, "a timeout is an error result", text_of(r))
            check("timed out" in text_of(r), "the result says it timed out", text_of(r))
            check(st.get("timed_out") is True, "structured timed_out", repr(st))
            check(took < 10, "the timeout returns promptly", f"{took:.1f}s")
            check("start" in text_of(r), "output before the timeout is kept", text_of(r))

            # a timeout above the server's maximum is lowered, and said
            r = await run(language="python", code="print('ok')", timeout=10_000)
            check(not is_error(r) and "lowered" in text_of(r), "the timeout is capped", text_of(r))
            r = await run(language="python", code="print('ok')", timeout=-1)
            check(is_error(r) and "invalid timeout" in text_of(r), "a negative timeout is refused", text_of(r))

            # the host's /etc/shadow stays out of reach
            secret = ""
            try:
                with open("/etc/shadow") as f:
                    secret = f.readline().strip()
            except OSError:
                pass
            r = await run(language="python", code="print(open('/etc/shadow').read())")
            t = text_of(r)
            check(is_error(r) is True, "reading /etc/shadow fails", t)
            check(("Error" in t) and (not secret or secret not in t), "no shadow content in the result", t)
            r = await run(language="bash", code="cat /etc/shadow")
            check(is_error(r) is True and (not secret or secret not in text_of(r)), "bash cannot read /etc/shadow", text_of(r))

            # libraries: installed on container backends, a readable refusal on native
            if args.backend == "native":
                r = await run(language="python", code="import six", libraries=["six"])
                check(is_error(r) and "native backend" in text_of(r), "libraries on native are refused, saying why", text_of(r))
            else:
                r = await run(language="python", code="import six\nprint('six', six.__version__)", libraries=["six"])
                check(not is_error(r) and "six 1." in text_of(r), "a library is installed first", text_of(r))
            r = await run(language="python", code="print(1)", libraries=["six; rm -rf /"])
            check(is_error(r) and "invalid library name" in text_of(r), "a bad library name is refused", text_of(r))

            # an unknown language
            r = await run(language="cobol", code="DISPLAY 'HI'.")
            t = text_of(r)
            check(is_error(r) is True, "an unknown language is an error result", t)
            check("unknown language" in t and "python" in t and "javascript" in t, "it lists the valid languages", t)

            # output is capped, and the result says so
            r = await run(language="python", code="print('x' * 100000)")
            st = structured(r) or {}
            check("truncated" in text_of(r) and st.get("stdout_truncated") is True, "long output is cut and says so", text_of(r)[-300:])
            check(len(st.get("stdout", "")) <= 4096, "at most --max-output of it", str(len(st.get("stdout", ""))))

            r = await run(language="python", code="import sys\nwhile True:\n    sys.stdout.write('y' * 65536)")
            check(is_error(r) is True and "output limit" in text_of(r), "endless output stops the program and says so", text_of(r)[:300])

            # no state leaks between calls
            await run(language="python", code="open('left.txt', 'w').write('x')")
            r = await run(language="python", code="import os\nprint(os.path.exists('left.txt'))")
            check("False" in text_of(r), "each call starts from an empty sandbox", text_of(r))

            # several calls at once
            t0 = time.monotonic()
            rs = await asyncio.gather(
                *[run(language="python", code=f"import time\ntime.sleep(0.5)\nprint('call {i}')") for i in range(3)]
            )
            check(all(f"call {i}" in text_of(r) for i, r in enumerate(rs)), "concurrent calls", repr([text_of(r) for r in rs]))

            # a call the client abandons (mcp >= 2 sends notifications/cancelled) stops its sandbox
            import importlib.metadata
            import subprocess

            if int(importlib.metadata.version("mcp").split(".")[0]) >= 2:
                marker = "sleep 47.%d" % os.getpid()
                try:
                    await asyncio.wait_for(run(language="bash", code=marker), 2)
                except (asyncio.TimeoutError, TimeoutError):
                    pass
                left = []
                for _ in range(20):
                    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
                    if not left:
                        break
                    await asyncio.sleep(0.25)
                check(not left, "a cancelled call's program is stopped", f"still running: {left}")
                r = await run(language="python", code="print('after cancel')")
                check("after cancel" in text_of(r), "the server keeps serving after a cancellation", text_of(r))

            # matplotlib plots come back as images
            probe = await run(language="python", code="import matplotlib")
            if is_error(probe) and not args.require_plots:
                print("SKIPPED: plots: matplotlib is not installed for the sandbox's python", flush=True)
                notes.append("plots skipped")
            else:
                code = (
                    "import matplotlib.pyplot as plt\n"
                    "plt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()\n"
                    "plt.figure()\nplt.bar(['a', 'b'], [3, 5])\n"  # left open: saved at exit
                    "print('plotted')\n"
                )
                r = await run(language="python", code=code)
                imgs = images_of(r)
                check(not is_error(r) and "plotted" in text_of(r), "a matplotlib program runs", text_of(r))
                check(len(imgs) == 2, "show() and the figure left open give two images", f"{len(imgs)} images")
                check(all(m == "image/png" and d.startswith(PNG) for m, d in imgs), "they are PNGs", repr([(m, d[:8]) for m, d in imgs]))
                st = structured(r) or {}
                check(st.get("plots") == ["plot-001.png", "plot-002.png"], "structured plot names", repr(st.get("plots")))
                r = await run(language="python", code="print('no plots here')")
                check(images_of(r) == [], "no images without plots", repr(r.content))

    if failures:
        print(f"\n{len(failures)} check(s) failed:", file=sys.stderr)
        for f in failures:
            print(" - " + f, file=sys.stderr)
        return 1
    print("\nall checks passed" + (f" ({', '.join(notes)})" if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
