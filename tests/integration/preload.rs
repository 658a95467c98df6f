//! Preloaded Python (`backends.native.preload`, `backends.docker.preload`,
//! `backends.podman.preload`; README "Preloaded Python"), on every backend of
//! [`common::backends()`]: a job run in a preloaded interpreter looks like a fresh
//! `python3 main.py` (argv, paths, environment, flags, streams, modules), keeps exit codes,
//! stdin, timeouts and tracebacks, and finds no byte of an earlier job's data in its memory.
//!
//! A native slot's server started after a job asked preloads when it starts, as a
//! container's agent does; a server that was already serving preloads after the first job
//! that asks (so its next job `execve`s too): every file here starts with two warm-up jobs
//! and runs with `-j 1`. A job
//! tells how it ran by `/proc/self/exe`: the interpreter's binary, or llm-sandbox's (the
//! host's binary on native, `/.llm-sandbox/agent` in a container).

use crate::common;

use common::{backends, field, status, Scratch};
use serde_json::Value;

const PROBE: &str = r#"
import json, os, site, sys, __main__
print(json.dumps({
    "argv": sys.argv, "orig_argv": sys.orig_argv, "path": sys.path,
    "file": __file__, "executable": sys.executable, "flags": str(sys.flags),
    "streams": [(s.name, s.encoding, s.errors, s.line_buffering, s.write_through, s.mode)
                for s in (sys.stdin, sys.stdout, sys.stderr)],
    "env": dict(os.environ), "modules": sorted(sys.modules), "main": sorted(vars(__main__)),
    "fds": sorted(os.listdir("/proc/self/fd")), "uid": os.getuid(), "cwd": os.getcwd(),
    "cmdline": open("/proc/self/cmdline").read(), "comm": open("/proc/self/comm").read(),
    "environ": sorted(open("/proc/self/environ").read().split("\0")),
    "user_site": [site.USER_BASE, site.USER_SITE, site.ENABLE_USER_SITE],
}, sort_keys=True))
print(os.readlink("/proc/self/exe"), file=sys.stderr)
"#;

fn preloaded(job: &Value) -> bool {
    field(job, "stderr").contains("llm-sandbox")
}

/// One job entry of the YAML files here: `fields` (YAML lines of the entry, each ending in
/// a newline) and the Python `code` as a literal block.
fn job(name: &str, fields: &str, code: &str) -> String {
    let mut entry = format!("  - name: {name}\n    lang: python\n");
    for line in fields.lines() {
        entry += &format!("    {line}\n");
    }
    entry += "    code: |\n";
    for line in code.lines() {
        entry += &format!("      {line}\n");
    }
    entry
}

const HEADER: &str =
    "backends: { native: { preload: true }, docker: { preload: true }, podman: { preload: true } }\njobs:\n";

fn run(dir: &Scratch, file: &str, backend: &str, preload_env: &str) -> common::Run {
    common::run_report(
        dir.cmd()
            .args(["run", "--no-progress", "-j", "1", "--backend", backend])
            .args(["--json", "-", file])
            .env("LLM_SANDBOX_PRELOAD", preload_env),
    )
}

#[test]
fn a_preloaded_job_looks_like_a_fresh_python3() {
    for backend in backends() {
        let dir = Scratch::new();
        let mut yaml = String::from(HEADER);
        for i in 0..5 {
            yaml += &job(
                &format!("p{i}"),
                // Arguments and variables as the preparation receives them (NUL-separated,
                // counted): an empty one, quotes, a backslash, a newline, non-ASCII.
                &format!(
                    "args: [a, 'b c', '', \"é'\\\"\\\\\"]\nenv: {{ EXTRA: x{i}, TRICKY: \"a = b\\n'c' \\\"d\\\" é\" }}\n"
                ),
                PROBE,
            );
        }
        dir.write("probe.yaml", &yaml);
        let probe = |r: &common::Run, i: usize| -> Value {
            let j = r.job(&format!("p{i}"));
            assert_eq!(status(j), "passed", "{}", r.pretty());
            serde_json::from_str(field(j, "stdout")).expect("probe output")
        };
        // The reference: fresh python3 processes (LLM_SANDBOX_PRELOAD=0 turns preloading
        // off everywhere).
        let r = run(&dir, "probe.yaml", backend, "0");
        for (name, j) in r.jobs() {
            assert!(
                !preloaded(&j),
                "{name} ran preloaded with LLM_SANDBOX_PRELOAD=0"
            );
        }
        let fresh = probe(&r, 0);
        assert_eq!(
            fresh["argv"],
            serde_json::json!(["main.py", "a", "b c", "", "é'\"\\"])
        );
        assert_eq!(fresh["env"]["TRICKY"], "a = b\n'c' \"d\" é");
        assert_eq!(fresh["fds"], serde_json::json!(["0", "1", "2", "3"]));

        let r = run(&dir, "probe.yaml", backend, "");
        let jobs = r.jobs();
        // Every backend preloads before its first job: the native slot's server started
        // after the job asked, a container's agent when it starts.
        for i in 0..5 {
            assert!(
                preloaded(&jobs[&format!("p{i}")]),
                "p{i} did not run preloaded: {}",
                r.pretty()
            );
        }
        for i in 0..5 {
            let mut got = probe(&r, i);
            // Each job's own variable; everything else must be what a fresh python3 shows.
            assert_eq!(got["env"]["EXTRA"], format!("x{i}"));
            got["env"]["EXTRA"] = fresh["env"]["EXTRA"].clone();
            let own = format!("EXTRA=x{i}");
            for v in got["environ"].as_array_mut().unwrap() {
                if v == own.as_str() {
                    *v = Value::from("EXTRA=x0");
                }
            }
            assert_eq!(got, fresh, "{backend}: p{i} differs from a fresh python3");
        }
    }
}

#[test]
fn a_preloaded_job_keeps_exit_codes_stdin_tracebacks_and_timeouts() {
    for backend in backends() {
        let dir = Scratch::new();
        let exe = "import os, sys; print(os.readlink('/proc/self/exe'), file=sys.stderr)\n";
        let job = |name: &str, code: &str, fields: &str| job(name, fields, &format!("{exe}{code}"));
        let mut yaml = String::from(HEADER);
        yaml += &job("w0", "pass\n", "timeout: 10s");
        yaml += &job("w1", "pass\n", "timeout: 10s");
        yaml += &job("exit3", "sys.exit(3)\n", "expect: { exit_code: 3 }");
        yaml += &job(
            "raises",
            "raise ValueError('boom')\n",
            "expect: { exit_code: 1, stderr_contains: [\"ValueError: boom\", \"Traceback\"] }",
        );
        yaml += &job(
            "echo",
            "print(sys.stdin.read().upper(), end='')\n",
            "stdin: \"hello\\n\"\nexpect: { stdout: HELLO }",
        );
        yaml += &job("loops", "while True: pass\n", "timeout: 1s");
        yaml += &job("after", "print('next')\n", "expect: { stdout: next }");
        dir.write("codes.yaml", &yaml);
        let started = std::time::Instant::now();
        let r = run(&dir, "codes.yaml", backend, "");
        let jobs = r.jobs();
        for name in ["exit3", "raises", "echo", "after"] {
            assert_eq!(status(&jobs[name]), "passed", "{name}: {}", r.pretty());
        }
        assert_eq!(status(&jobs["loops"]), "timeout", "{}", r.pretty());
        for name in ["exit3", "raises", "echo", "loops", "after"] {
            assert!(
                preloaded(&jobs[name]),
                "{name} did not run preloaded: {}",
                r.pretty()
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the endless loop was not stopped at its timeout"
        );
    }
}

/// An earlier job's environment, arguments and standard input went through the sandbox
/// server's memory, which a preloaded job inherits (it does not execve): not one copy of
/// them may be readable by the next job, which searches every readable page of its own
/// memory for them.
#[test]
fn a_preloaded_job_finds_no_earlier_jobs_data_in_its_memory() {
    for backend in backends() {
        let dir = Scratch::new();
        let canary = "LEAKCANARY7391";
        // Few allocations before the search (they would reuse, and so overwrite, freed memory
        // the search is after); chunks of 256 KiB are fresh mappings, not in the list of maps.
        let scan = r#"
    import os, sys
    needle = b"".join([b"LEAK", b"CANARY", b"7391"])
    me = (id(needle), id(needle) + 64)
    maps = open("/proc/self/maps").read().splitlines()
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    hits, scanned = [], 0
    for line in maps:
        addr, perms = line.split()[:2]
        if perms[0] != "r" or "[vvar" in line or "[vsyscall" in line:
            continue
        lo, hi = (int(x, 16) for x in addr.split("-"))
        pos = lo
        while pos < hi:
            try:
                chunk = os.pread(fd, min(1 << 18, hi - pos), pos)
            except OSError:
                break
            scanned += len(chunk)
            i = chunk.find(needle)
            while i >= 0:
                if not me[0] <= pos + i < me[1]:
                    hits.append(line)
                i = chunk.find(needle, i + 1)
            pos += max(1, len(chunk) - len(needle))
    print(len(hits), scanned > 1 << 20, hits[:3])
    print(os.readlink("/proc/self/exe"), file=sys.stderr)
    "#;
        let mut yaml = String::from(HEADER);
        for w in ["w0", "w1"] {
            yaml += &format!("  - {{ name: {w}, lang: python, code: 'pass' }}\n");
        }
        // Large enough (30 KB) that its freed copies are not all reused by later allocations.
        let token = format!("{canary}-").repeat(2000);
        yaml += &format!(
            "  - name: secret\n    lang: python\n    env: {{ TOKEN: '{token}' }}\n    args: [{canary}]\n    stdin: \"{canary}\\n\"\n    code: 'import os, sys; print(os.environ[\"TOKEN\"], sys.argv[1], sys.stdin.read())'\n"
        );
        for s in ["scan1", "scan2"] {
            yaml += &job(s, "", scan);
        }
        dir.write("leak.yaml", &yaml);
        let r = run(&dir, "leak.yaml", backend, "");
        let jobs = r.jobs();
        assert!(
            field(&jobs["secret"], "stdout").contains(canary),
            "{}",
            r.pretty()
        );
        for s in ["scan1", "scan2"] {
            let j = &jobs[s];
            assert_eq!(status(j), "passed", "{}", r.pretty());
            assert!(preloaded(j), "{s} did not run preloaded: {}", r.pretty());
            assert!(
                field(j, "stdout").starts_with("0 True"),
                "{s} found the earlier job's data in its memory: {}",
                field(j, "stdout")
            );
        }
    }
}

/// `preload = { modules = [...] }` (every backend): the modules are in `sys.modules` before
/// a job imports them (`fractions`: no start-up imports it), the standard library's even
/// though the runner's working directory has a `fractions.py`; a job whose directory has its
/// own module of that name starts python3 (a fresh python3 would import the job's); a name
/// that is not a module is an error naming it, before anything runs.
#[test]
fn preloaded_modules_are_imported_ahead_unless_the_job_shadows_them() {
    let dir = Scratch::new();
    let code = "import sys\nprint('fractions' in sys.modules)\nimport fractions, os\nprint(fractions.__file__.startswith('/sandbox'))\nprint(hasattr(fractions, 'Fraction'))\nprint(os.readlink('/proc/self/exe'), file=sys.stderr)\n";
    let with = "{ preload: { modules: [fractions, collections.abc] } }";
    let mut yaml =
        format!("backends: {{ native: {with}, docker: {with}, podman: {with} }}\njobs:\n");
    for i in 0..4 {
        yaml += &job(&format!("ahead{i}"), "", code);
    }
    yaml += &job("shadowed", "files: [fractions.py]\n", code);
    dir.write("mods.yaml", &yaml);
    dir.write("fractions.py", "");
    for backend in backends() {
        let r = run(&dir, "mods.yaml", backend, "");
        let jobs = r.jobs();
        for i in 0..4 {
            let j = &jobs[&format!("ahead{i}")];
            assert!(preloaded(j), "{backend} ahead{i}: {}", r.pretty());
            assert_eq!(
                field(j, "stdout"),
                "True\nFalse\nTrue\n",
                "{backend}: {}",
                r.pretty()
            );
        }
        let j = &jobs["shadowed"];
        assert!(
            !preloaded(j),
            "{backend}: the job's own fractions.py was shadowed: {}",
            r.pretty()
        );
        assert_eq!(
            field(j, "stdout"),
            "False\nTrue\nFalse\n",
            "{backend}: {}",
            r.pretty()
        );
    }

    dir.write(
        "bad.yaml",
        "backends: { native: { preload: { modules: [typing, 'not-a-module'] } } }\njobs:\n  - { name: x, lang: python, code: pass }\n",
    );
    let out = dir.cmd().args(["validate", "bad.yaml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not-a-module") && err.contains("bad.yaml"),
        "{err}"
    );
}
