#!/usr/bin/env python3
"""The Python llm-sandbox (PyPI `llm-sandbox`, the seed project) timed on this machine's
Docker daemon, for bench/docker and bench/humaneval (BENCH_PYTHON=1). Both call it with the
Python of the venv they keep in target/bench-venv; it prints one JSON object.

    python_llm_sandbox.py sessions  --image IMG --runs R [--skip-setup]
        R times: SandboxSession(lang="python", image=IMG).open() + run("print(1)") + close()
    python_llm_sandbox.py humaneval --image IMG --samples ROWS.jsonl --n K --jobs J [--skip-setup]
        K rows of a humaneval.toml dataset (evenly spread), each in its own session, J at a
        time: open + run(prompt + completion + test + check(entry_point), timeout=3) + close

It never pulls: the image must exist locally (the library pulls only a missing image).
"""
import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def session(image, skip_setup, code, timeout=None):
    from llm_sandbox import SandboxSession

    t0 = time.perf_counter()
    r = {"ok": False}
    s = SandboxSession(lang="python", image=image, skip_environment_setup=skip_setup, verbose=False)
    try:
        s.open()
        t1 = time.perf_counter()
        r["open_s"] = t1 - t0
        try:
            out = s.run(code, timeout=timeout)
            r.update(exit_code=out.exit_code, stdout=out.stdout[-300:], stderr=out.stderr[-300:])
            r["ok"] = True
        except Exception as e:  # a timeout of the program, mostly
            r.update(exit_code=None, error=f"{type(e).__name__}: {e}"[:300])
        t2 = time.perf_counter()
        r["run_s"] = t2 - t1
    finally:
        t2 = time.perf_counter()
        s.close()
        t3 = time.perf_counter()
    r["close_s"] = t3 - t2
    r["total_s"] = t3 - t0
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sessions", "humaneval"])
    ap.add_argument("--image", required=True)
    ap.add_argument("--skip-setup", action="store_true",
                    help="skip_environment_setup=True (no venv, no pip upgrade in the container)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1)
    a = ap.parse_args()

    import docker
    import llm_sandbox

    try:
        docker.from_env().images.get(a.image)
    except Exception as e:
        print(json.dumps({"error": f"image {a.image} is not here ({e}); the library would pull it: not measured"}))
        return
    info = {"version": getattr(llm_sandbox, "__version__", None) or _version(), "image": a.image,
            "skip_environment_setup": a.skip_setup}
    if a.what == "sessions":
        runs = []
        for _ in range(a.runs):
            try:
                runs.append(session(a.image, a.skip_setup, "print(1)"))
            except Exception as e:
                runs.append({"ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
        print(json.dumps({**info, "runs": runs}))
        return
    rows = [json.loads(l) for l in open(a.samples) if l.strip()]
    step = max(1, len(rows) // a.n)
    picked = rows[::step][: a.n]

    def one(row):
        prog = row["prompt"] + row["completion"] + "\n" + row["test"] + "\n" + f"check({row['entry_point']})"
        try:
            r = session(a.image, a.skip_setup, prog, timeout=3)
        except Exception as e:
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        r["task_id"] = row["task_id"]
        r["passed"] = r.get("exit_code") == 0
        return r

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as ex:
        results = list(ex.map(one, picked))
    wall = time.perf_counter() - t0
    print(json.dumps({**info, "n": len(picked), "of": len(rows), "jobs": a.jobs, "wall_s": wall,
                      "results": results}))


def _version():
    from importlib.metadata import version

    return version("llm-sandbox")


if __name__ == "__main__":
    sys.exit(main())
