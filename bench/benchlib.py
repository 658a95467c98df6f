"""Shared by bench/docker and bench/humaneval: the binary under test, the venv of the
Python tools they compare with, the compatibility image of the Python llm-sandbox, stats."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "bench-venv")
VPY = os.path.join(VENV, "bin", "python")
PY_IMAGE = "llm-sandbox/python:latest"
# The Python llm-sandbox runs `python FILE` (and, unless skip_environment_setup, first
# `python -m venv` + `pip install --upgrade pip`): our image has only `python3`, no venv
# module and no network. This image adds the one symlink, nothing else (docker run + commit,
# kept for the next run and remade when the base changes; `docker rmi` it at will).
COMPAT_IMAGE = "llm-sandbox-bench/python-compat:latest"
PYTHON_FIGURE_S = 11.0


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


def die(msg):
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr)
    sys.exit(2)


def binary(tmp):
    """Builds (unless BENCH_NO_BUILD=1) and snapshots the release binary: the run measures one
    binary even if target/ is rebuilt meanwhile. Returns (path, provenance line)."""
    if not env_flag("BENCH_NO_BUILD"):
        r = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
        if r.returncode != 0:
            die("cargo build --release failed (BENCH_NO_BUILD=1 measures the binary already built)")
    src = os.path.join(ROOT, "target", "release", "llm-sandbox")
    if not os.path.exists(src):
        die(f"{src} is missing: cargo build --release")
    dst = os.path.join(tmp, "llm-sandbox")
    shutil.copy2(src, dst)
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(src)))
    return dst, f"binary: target/release/llm-sandbox built {built} (working tree now: {git or '?'})"


def need_docker(images):
    r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        die(f"no Docker daemon: {r.stderr.strip()} (scripts/engines docker starts one)")
    for img in images:
        if subprocess.run(["docker", "image", "inspect", img], capture_output=True).returncode != 0:
            die(f"image {img} missing: scripts/build-images docker python")
    return r.stdout.strip()


def busy_note():
    """Other load on the machine (other runners, builds) makes the numbers noisy: say so."""
    load = os.getloadavg()[0]
    ps = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout.split("\n")
    others = [l.split()[1] for l in ps[1:] if l.split() and int(l.split()[0]) != os.getpid()
              and l.split()[1] in ("llm-sandbox", "cargo", "rustc", "cargo-nextest")]
    note = f"load average {load:.2f} on {os.cpu_count()} cores"
    if others:
        note += f"; also running: {', '.join(sorted(set(others)))} ({len(others)} processes) -- numbers are noisy"
    return note


def cores():
    return len(os.sched_getaffinity(0))


def venv(packages):
    """target/bench-venv with `packages` (pip requirement strings, importable module name
    first): created and installed once, reused after that."""
    if not os.path.exists(VPY):
        print(f"  creating {os.path.relpath(VENV, ROOT)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    missing = [req for mod, req in packages
               if subprocess.run([VPY, "-c", f"import {mod}"], capture_output=True).returncode != 0]
    if missing:
        print(f"  pip install {' '.join(missing)} (into {os.path.relpath(VENV, ROOT)}) ...", flush=True)
        r = subprocess.run([VPY, "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing])
        if r.returncode != 0:
            return f"pip install {' '.join(missing)} failed (exit {r.returncode})"
    return None


def compat_image():
    """COMPAT_IMAGE from PY_IMAGE plus `python` -> python3 (docker run + commit: no builder,
    no registry). Rebuilt when PY_IMAGE changed. Returns an error or None."""
    base = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", PY_IMAGE],
                          capture_output=True, text=True).stdout.strip()
    have = subprocess.run(["docker", "image", "inspect", "--format",
                           '{{index .Config.Labels "llm-sandbox-bench.base"}}', COMPAT_IMAGE],
                          capture_output=True, text=True).stdout.strip()
    entry = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Entrypoint}}", COMPAT_IMAGE],
                           capture_output=True, text=True).stdout.strip()
    if have == base and entry == "null":
        return None
    name = f"llm-sandbox-bench-compat-{os.getpid()}"
    r = subprocess.run(["docker", "run", "--name", name, "--network", "none", "--user", "0",
                        PY_IMAGE, "ln", "-sf", "/usr/bin/python3", "/usr/local/bin/python"],
                       capture_output=True, text=True)
    try:
        if r.returncode != 0:
            return f"docker run {PY_IMAGE} ln -s ... failed: {r.stderr.strip()}"
        r = subprocess.run(["docker", "commit", "--change", f"LABEL llm-sandbox-bench.base={base}",
                            "--change", 'CMD ["python3"]', name, COMPAT_IMAGE],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"docker commit failed: {r.stderr.strip()}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return None


def python_llm_sandbox(args):
    """Runs bench/python_llm_sandbox.py in the venv; returns its JSON (or {"error": ...})."""
    helper = os.path.join(ROOT, "bench", "python_llm_sandbox.py")
    r = subprocess.run([VPY, helper, *args], capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception:
        return {"error": f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}"}


def median(v):
    return statistics.median(v) if v else float("nan")


def mean(v):
    return statistics.fmean(v) if v else float("nan")


def met(ok):
    return "MET" if ok else "NOT MET"


def tempdir(prefix):
    return tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/tmp"))
