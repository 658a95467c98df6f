//! Backend conformance: the same jobs, with the same expected results, on every backend of
//! [`common::backends()`] (native; docker and podman when they answer and have the default
//! images; or exactly `LLM_SANDBOX_TEST_BACKENDS`).
//!
//! kubernetes runs against examples/fake-apiserver (started by the test), whose pods have
//! the host's toolchains.
//!
//! One test per backend runs all cases as ONE `llm-sandbox run -j 2 --backend B` over one
//! job file, then checks every job: its status must be the expected one (a backend that
//! answers `error` or `timeout` where `passed` is expected fails the test), plus what each
//! case looks at (output, exit code, phase, message, artifacts on the host). Every
//! mismatch is collected and reported at once, each naming the backend and the job.
//!
//! Cases: hello in every language (native: typescript, rust and r only when the host has
//! their toolchain), stdin, no stdin, args, env, workdir, input files, artifacts, expect.files
//! (passing and failing), exit codes, a compile error, the timeout, the resource figures
//! (`cpu_ms`, `peak_memory_bytes`) and `limits.cpu_time`, and the memory, output, pids and
//! disk limits, network off, non-root.

use crate::common;

use common::{backend_selected, field, status, Run, Scratch};
use serde_json::Value;
use std::fmt::Display;
use std::path::{Path, PathBuf};

#[test]
fn native() {
    conformance("native");
}

#[test]
fn docker() {
    conformance("docker");
}

#[test]
fn podman() {
    conformance("podman");
}

#[test]
fn kubernetes() {
    conformance("kubernetes");
}

/// In the runner's environment; no job may see it.
const SECRET: &str = "conformance-secret-that-must-not-leak";

/// Every hello program prints this.
const HELLO: &str = "Hello, World!";

/// (lang, hello program).
const HELLOS: &[(&str, &str)] = &[
    ("python", r#"print("Hello, World!")"#),
    ("javascript", r#"console.log("Hello, World!");"#),
    (
        "typescript",
        "const greeting: string = \"Hello, World!\";\nconsole.log(greeting);\n",
    ),
    (
        "java",
        "public class Main {\n    public static void main(String[] args) {\n        System.out.println(\"Hello, World!\");\n    }\n}\n",
    ),
    (
        "c",
        "#include <stdio.h>\nint main(void) { puts(\"Hello, World!\"); return 0; }\n",
    ),
    (
        "cpp",
        "#include <iostream>\nint main() { std::cout << \"Hello, World!\" << std::endl; }\n",
    ),
    (
        "go",
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"Hello, World!\") }\n",
    ),
    ("ruby", r#"puts "Hello, World!""#),
    ("rust", r#"fn main() { println!("Hello, World!"); }"#),
    ("r", "cat(\"Hello, World!\\n\")\n"),
    ("bash", r#"echo "Hello, World!""#),
];

/// Input files of the `input-files` case, relative to the job file.
const INPUTS: &[(&str, &str)] = &[
    ("data/numbers.csv", "n\n1\n2\n3\n"),
    ("data/config.txt", "factor=10\n"),
    ("data/parts/a.txt", "a\n"),
    ("data/parts/b.txt", "b\n"),
    ("data/tree/top.txt", "root\n"),
    ("data/tree/sub/leaf.txt", "leaf\n"),
    // Test cases (README, "Test cases"): the third answer is wrong on purpose.
    ("cases/1.in", "1 2\n"),
    ("cases/1.out", "3\n"),
    ("cases/2.in", "10 20\n"),
    ("cases/2.ans", "30\n"),
    ("cases/3.in", "5 5\n"),
    ("cases/3.out", "11\n"),
];

/// One job of the conformance file and what every backend must report for it.
struct Case {
    name: String,
    lang: &'static str,
    /// The job's other keys, TOML.
    toml: String,
    status: &'static str,
    verify: fn(&mut Verdict),
}

fn case(
    name: &str,
    lang: &'static str,
    status: &'static str,
    toml: &str,
    verify: fn(&mut Verdict),
) -> Case {
    Case {
        name: name.to_string(),
        lang,
        toml: toml.to_string(),
        status,
        verify,
    }
}

/// What a case's checks see, and where mismatches go.
struct Verdict<'a> {
    backend: &'a str,
    name: &'a str,
    job: &'a Value,
    /// The run's working directory (the job file, `artifacts/`).
    dir: &'a Path,
    errors: &'a mut Vec<String>,
}

impl<'a> Verdict<'a> {
    fn ensure(&mut self, ok: bool, what: impl Display) {
        if !ok {
            self.errors.push(format!(
                "[{}] {}: {what}\n{}",
                self.backend,
                self.name,
                brief(self.job)
            ));
        }
    }

    fn stdout(&self) -> &'a str {
        field(self.job, "stdout")
    }

    fn stderr(&self) -> &'a str {
        field(self.job, "stderr")
    }

    fn message(&self) -> &'a str {
        field(self.job, "message")
    }

    fn exit_code(&self) -> Option<i64> {
        self.job["exit_code"].as_i64()
    }

    /// Where this job's artifacts go on the host.
    fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts").join(self.name)
    }
}

/// A job of the report, short enough for a failure message.
fn brief(j: &Value) -> String {
    let cut = |s: &str| -> String {
        if s.chars().count() > 400 {
            format!(
                "{}… ({} bytes)",
                s.chars().take(400).collect::<String>(),
                s.len()
            )
        } else {
            s.to_string()
        }
    };
    format!(
        "    status={} phase={} exit_code={} duration_ms={} cpu_ms={} peak_memory_bytes={}\n    message: {}\n    stdout: {:?}\n    stderr: {:?}\n    checks: {}",
        j["status"],
        j["phase"],
        j["exit_code"],
        j["duration_ms"],
        j["cpu_ms"],
        j["peak_memory_bytes"],
        field(j, "message"),
        cut(field(j, "stdout")),
        cut(field(j, "stderr")),
        j["checks"]
    )
}

/// "<prefix><N>MiB" numbers of the lines of `out` that start with `prefix`.
fn numbers_after(out: &str, prefix: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

fn cases(backend: &str) -> Vec<Case> {
    let mut v = Vec::new();
    for (lang, code) in HELLOS {
        // Native runs the host's toolchains (so do the fake API server's pods): a language
        // whose toolchain the host lacks is skipped, said, or a failure under CI=true.
        if backend == "native" || backend == "kubernetes" {
            let l: llm_sandbox::Lang = serde_json::from_value(Value::from(*lang)).unwrap();
            if let Err(why) = llm_sandbox::lang::probe_host(l) {
                if let Some(flag) = common::strict() {
                    panic!("{lang} is required on the {backend} backend ({flag}) but: {why}");
                }
                common::skipped(format!("{backend} conformance hello-{lang}: {why}"));
                continue;
            }
        }
        v.push(case(
            &format!("hello-{lang}"),
            lang,
            "passed",
            &format!(
                "code = {}\nexpect.stdout = \"{HELLO}\"\n",
                serde_json::to_string(code).unwrap()
            ),
            |v| {
                let want = format!("{HELLO}\n");
                v.ensure(v.stdout() == want, format!("stdout is not {want:?}"));
                v.ensure(v.exit_code() == Some(0), "exit code is not 0");
            },
        ));
    }

    v.push(case(
        "stdin",
        "python",
        "passed",
        r#"
stdin = "first line\nsecond line\n"
code = '''
import sys
data = sys.stdin.read()
print(len(data))
print(data.upper(), end="")
'''
expect.stdout = "23\nFIRST LINE\nSECOND LINE"
"#,
        |_| {},
    ));
    v.push(case(
        "stdin-none",
        "python",
        "passed",
        r#"
timeout = "5s"
code = 'import sys; print(repr(sys.stdin.read()))'
expect.stdout = "''"
"#,
        |v| {
            let waited = status(v.job) == "timeout";
            v.ensure(
                !waited,
                "without `stdin` the program must read EOF, not wait",
            );
        },
    ));
    v.push(case(
        "args",
        "python",
        "passed",
        r#"
args = ["two words", "--flag", "", "ünï✓", "$HOME", "*", "a'b\"c"]
code = 'import sys, json; print(json.dumps(sys.argv[1:], ensure_ascii=False))'
expect.stdout = '''["two words", "--flag", "", "ünï✓", "$HOME", "*", "a'b\"c"]'''
"#,
        |_| {},
    ));
    v.push(case(
        "env",
        "bash",
        "passed",
        r#"
env = { GREETING = "hello world", WITH_EQUALS = "a=b=c", EMPTY = "" }
code = 'echo "$GREETING|$WITH_EQUALS|${EMPTY-unset}|${LLM_SANDBOX_TEST_SECRET:-no-secret}"'
expect.stdout = "hello world|a=b=c||no-secret"
"#,
        |_| {},
    ));
    v.push(case(
        "workdir",
        "bash",
        "passed",
        r#"
code = 'pwd; echo "$HOME"; echo x > w.txt && mkdir -p d/e && echo writable'
expect.stdout = "/sandbox\n/sandbox\nwritable"
"#,
        |_| {},
    ));
    v.push(case(
        "input-files",
        "python",
        "passed",
        r#"
files = [
  "data/numbers.csv",
  { src = "data/config.txt", dest = "conf/settings.txt" },
  { src = "data/parts/*.txt", dest = "parts" },
  "data/tree",
]
code = '''
import csv, os
factor = int(open("conf/settings.txt").read().split("=")[1])
nums = [int(r["n"]) for r in csv.DictReader(open("data/numbers.csv"))]
print("total", sum(nums) * factor)
print("parts", "".join(open(f"parts/{p}").read().strip() for p in sorted(os.listdir("parts"))))
print("tree", open("data/tree/top.txt").read().strip(), open("data/tree/sub/leaf.txt").read().strip())
'''
expect.stdout = "total 60\nparts ab\ntree root leaf"
"#,
        |_| {},
    ));
    v.push(case(
        "artifacts-nested",
        "bash",
        "passed",
        r#"
artifacts = ["out/**/*.txt", "out/*.json", "top.txt"]
code = '''
mkdir -p out/nested/deep
echo '{"ok": true}' > out/result.json
echo level1 > out/level1.txt
echo spaced > "out/with space.txt"
echo deep > out/nested/deep/data.txt
echo not-an-artifact > out/skip.log
echo top > top.txt
echo scratch > scratch.txt.bak
'''
"#,
        |v| {
            let dir = v.artifacts();
            let want = [
                ("out/result.json", "{\"ok\": true}\n"),
                ("out/level1.txt", "level1\n"),
                ("out/with space.txt", "spaced\n"),
                ("out/nested/deep/data.txt", "deep\n"),
                ("top.txt", "top\n"),
            ];
            for (rel, content) in want {
                let p = dir.join(rel);
                let got = std::fs::read_to_string(&p);
                v.ensure(
                    got.as_deref().ok() == Some(content),
                    format!("artifact {} should hold {content:?}: {got:?}", p.display()),
                );
            }
            for rel in ["out/skip.log", "scratch.txt.bak", "main.sh"] {
                let p = dir.join(rel);
                v.ensure(!p.exists(), format!("{} is not an artifact", p.display()));
            }
            let listed: Vec<String> = v.job["artifacts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            v.ensure(
                listed.len() == want.len(),
                format!("artifacts[] should list {} files: {listed:?}", want.len()),
            );
            for (rel, _) in want {
                v.ensure(
                    listed
                        .iter()
                        .any(|l| l.ends_with(&format!("{}/{rel}", v.name))),
                    format!("artifacts[] does not list {rel}: {listed:?}"),
                );
            }
            for l in &listed {
                let p = v.dir.join(l); // relative paths are relative to the run's cwd
                v.ensure(
                    p.is_file(),
                    format!("listed artifact {l} is not on the host"),
                );
            }
        },
    ));
    v.push(case(
        "expect-files-pass",
        "python",
        "passed",
        r#"
code = '''
import json
json.dump({"total": 60, "items": [1, 2]}, open("result.json", "w"))
open("report.txt", "w").write("hello\n")
'''
expect.files."result.json" = { json = { items = [1, 2], total = 60 } }
expect.files."report.txt" = { equals = "hello\n", contains = "ell", regex = '(?m)^h\w+$', sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03" }
expect.files."missing.txt" = { exists = false }
"#,
        |v| {
            for kind in [
                "file.json",
                "file.equals",
                "file.contains",
                "file.regex",
                "file.sha256",
                "file.exists",
            ] {
                let found = v.job["checks"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["kind"] == kind && c["passed"] == true));
                v.ensure(found, format!("no passed {kind} check"));
            }
        },
    ));
    v.push(case(
        "expect-files-fail",
        "python",
        "failed",
        r#"
code = '''
import json
json.dump({"total": 60, "items": [1, 2]}, open("result.json", "w"))
open("report.txt", "w").write("hello\n")
'''
expect.files."result.json" = { json = { items = [1, 2], total = 61 } }
expect.files."report.txt" = { equals = "bye\n" }
expect.files."missing.txt" = { exists = true }
"#,
        |v| {
            let failed = common::failed_checks(v.job);
            for kind in ["file.json", "file.equals", "file.exists"] {
                v.ensure(
                    failed.iter().any(|k| k == kind),
                    format!("{kind} should fail: {failed:?}"),
                );
            }
            v.ensure(v.exit_code() == Some(0), "the program itself exits 0");
        },
    ));
    v.push(case(
        "exit-code-expected",
        "bash",
        "passed",
        r#"
code = "echo out; echo err >&2; exit 3"
expect.exit_code = 3
expect.stdout = "out"
expect.stderr = "err"
"#,
        |v| {
            v.ensure(v.exit_code() == Some(3), "exit_code should be 3");
            v.ensure(v.stdout() == "out\n", "stdout should be \"out\\n\"");
            v.ensure(v.stderr() == "err\n", "stderr should be \"err\\n\"");
        },
    ));
    v.push(case(
        "exit-code-unexpected",
        "bash",
        "failed",
        r#"
code = "echo out; echo err >&2; exit 3"
"#,
        |v| {
            v.ensure(v.exit_code() == Some(3), "exit_code should be 3");
            let failed = common::failed_checks(v.job);
            v.ensure(
                failed == ["exit_code"],
                format!("only the exit_code check fails: {failed:?}"),
            );
        },
    ));
    v.push(case(
        "compile-error",
        "c",
        "failed",
        r#"
code = '''
int main(void) { return 0 }
'''
"#,
        |v| {
            v.ensure(v.job["phase"] == "compile", "phase should be compile");
            v.ensure(
                v.stderr().contains("error") && v.stderr().contains("main.c"),
                "stderr should hold the compiler's error about main.c",
            );
        },
    ));
    v.push(case(
        "timeout",
        "bash",
        "timeout",
        r#"
timeout = "1s"
code = "echo started; sleep 30; echo never"
"#,
        |v| {
            let m = v.message();
            v.ensure(
                m.contains("timed out") && m.contains("1s"),
                "the message should say it timed out after 1s",
            );
            v.ensure(
                v.stdout().contains("started") && !v.stdout().contains("never"),
                "the output before the timeout is kept",
            );
            let ms = v.job["duration_ms"].as_u64().unwrap_or(0);
            v.ensure(
                (900..10_000).contains(&ms),
                format!("duration {ms} ms is not about 1s"),
            );
        },
    ));
    // Test cases (README, "Test cases"): compiled once, a fresh sandbox per case (the
    // program leaves a file behind; no later case may see it), each case its own verdict
    // and figures.
    v.push(case(
        "cases-compiled",
        "c",
        "failed",
        r#"
code = """
#include <stdio.h>
int main(void) {
    long a, b;
    if (scanf("%ld %ld", &a, &b) != 2) return 3;
    FILE *f = fopen("left-behind.txt", "a");
    fputs("x\\n", f);
    fclose(f);
    f = fopen("left-behind.txt", "r");
    int lines = 0, c;
    while ((c = fgetc(f)) != EOF) lines += c == '\\n';
    if (lines != 1) printf("an earlier case left %d lines\\n", lines - 1);
    printf("%ld\\n", a + b);
    return 0;
}
"""
cases = "cases/*.in"
cases_stop = "never"
"#,
        |v| {
            v.ensure(
                v.job["cases_total"] == 3 && v.job["cases_passed"] == 2,
                format!(
                    "cases: 2 of 3 should pass, got {}/{}",
                    v.job["cases_passed"], v.job["cases_total"]
                ),
            );
            let cases = v.job["cases"].as_array().cloned().unwrap_or_default();
            let seen: Vec<(String, String)> = cases
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or("").to_string();
                    (name, status(c).to_string())
                })
                .collect();
            v.ensure(
                seen == [
                    ("1".to_string(), "passed".to_string()),
                    ("2".to_string(), "passed".to_string()),
                    ("3".to_string(), "failed".to_string()),
                ],
                format!("the cases' names and verdicts: {seen:?}"),
            );
            v.ensure(
                cases.iter().all(|c| c["cpu_ms"].as_u64().is_some()),
                "every case that ran reports its cpu_ms",
            );
            v.ensure(
                v.message().starts_with("case 3:"),
                format!("the job's message should name case 3: {}", v.message()),
            );
            v.ensure(
                v.stdout().trim() == "10",
                format!("the job's stdout is the failing case's: {:?}", v.stdout()),
            );
        },
    ));
    v.push(case(
        "cases-first-failure",
        "python",
        "failed",
        r#"
code = "a, b = map(float, input().split()); print(a / b)"
compare = { float = 1e-6 }
cases = [
  { name = "third", stdin = "1 3", expect.stdout = "0.333" },
  { name = "half", stdin = "1 2", expect.stdout = "0.5000000001" },
]
"#,
        |v| {
            let cases = v.job["cases"].as_array().cloned().unwrap_or_default();
            let seen: Vec<&str> = cases.iter().map(status).collect();
            v.ensure(
                seen == ["failed", "skipped"] && v.job["cases_passed"] == 0,
                format!("the first case fails (0.333 is not within 1e-6), the second does not run: {seen:?}"),
            );
        },
    ));
    // A checker (testlib's convention: `checker INPUT OUTPUT ANSWER`, exit 0 accepted, 1
    // wrong answer), compiled once, run in a sandbox of its own after each case.
    v.push(case(
        "cases-checker",
        "python",
        "failed",
        r#"
code = "n = int(input()); print(3, n - 3) if n > 8 else print(1, 1)"
cases = [{ name = "ten", stdin = "10" }, { name = "seven", stdin = "7" }]
cases_stop = "never"
checker = { lang = "c", code = """
#include <stdio.h>
int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: checker INPUT OUTPUT ANSWER"); return 3; }
    long n, a, b;
    FILE *in = fopen(argv[1], "r"), *out = fopen(argv[2], "r"), *ans = fopen(argv[3], "r");
    if (!in || !out || !ans || fscanf(in, "%ld", &n) != 1) return 3;
    if (fscanf(out, "%ld %ld", &a, &b) != 2) { fprintf(stderr, "expected two numbers"); return 2; }
    if (a + b != n) { fprintf(stderr, "%ld + %ld is not %ld", a, b, n); return 1; }
    fprintf(stderr, "ok %ld + %ld", a, b);
    return 0;
}
""" }
"#,
        |v| {
            let cases = v.job["cases"].as_array().cloned().unwrap_or_default();
            let seen: Vec<&str> = cases.iter().map(status).collect();
            v.ensure(
                seen == ["passed", "failed"],
                format!("the checker's verdicts: {seen:?}"),
            );
            let first = cases
                .first()
                .map(|c| check_said(c, "checker"))
                .unwrap_or_default();
            v.ensure(
                first.contains("ok 3 + 7"),
                format!("the first case's checker message: {first:?}"),
            );
            v.ensure(
                v.message() == "case seven: wrong answer: 1 + 1 is not 7",
                format!("the job's message: {:?}", v.message()),
            );
        },
    ));
    // An interactor (README, "Test cases"): `interactor INPUT OUTPUT`, its stdout the
    // program's stdin and the other way round, in sandboxes of their own at once; its exit
    // code decides, and nothing but the program's stdout reaches it.
    {
        const INTERACTOR: &str = r#"interactor = { lang = "python", code = """
import sys
secret = int(open(sys.argv[1]).read())
for q in range(1, 32):
    op, g = sys.stdin.readline().split()
    if op == "!":
        if int(g) != secret:
            sys.exit(print(f"answered {g}, the secret was {secret}", file=sys.stderr) or 1)
        print(f"found {secret} in {q}", file=sys.stderr)
        sys.exit(0)
    print("<" if secret < int(g) else ">" if secret > int(g) else "=", flush=True)
sys.exit(print("more than 31 lines", file=sys.stderr) or 1)
""" }
cases = [{ name = "small", stdin = "7" }, { name = "large", stdin = "999999999" }]
cases_stop = "never""#;
        v.push(case(
            "cases-interactor",
            "c",
            "passed",
            &format!(
                r#"
code = """
#include <stdio.h>
#include <string.h>
int main(void) {{
    long lo = 1, hi = 1000000000; char a[4];
    for (;;) {{
        long mid = (lo + hi) / 2;
        printf("? %ld\\n", mid); fflush(stdout);
        if (scanf("%3s", a) != 1) return 1;
        if (!strcmp(a, "=")) {{ printf("! %ld\\n", mid); return 0; }}
        if (!strcmp(a, "<")) hi = mid - 1; else lo = mid + 1;
    }}
}}
"""
{INTERACTOR}
"#
            ),
            |v| {
                let cases = v.job["cases"].as_array().cloned().unwrap_or_default();
                let said: Vec<String> = cases.iter().map(|c| check_said(c, "interactor")).collect();
                v.ensure(
                    said.len() == 2
                        && said[0].starts_with("the interactor accepted: found 7 in ")
                        && said[1].starts_with("the interactor accepted: found 999999999 in "),
                    format!("the interactor's words per case: {said:?}"),
                );
            },
        ));
        v.push(case(
            "cases-interactor-wrong",
            "python",
            "failed",
            &format!(
                r#"
code = """
import os, sys
# As an attacker would: its stderr never reaches the interactor, the interactor's files
# (the secret) are in another sandbox, and nothing of an earlier case (a warm container's
# /tmp) reaches this one.
if os.path.exists("/tmp/secret"):
    print("!", open("/tmp/secret").read(), flush=True)
    sys.exit(0)
open("/tmp/secret", "w").write("999999999")
print("! 7", file=sys.stderr, flush=True)
for p in ("input.txt", "/sandbox/input.txt", "answer.txt", "../input.txt"):
    if os.path.exists(p):
        print("!", open(p).read().strip(), flush=True)
        sys.exit(0)
print("? 5", flush=True)
input()
print("! 5", flush=True)
"""
{INTERACTOR}
"#
            ),
            |v| {
                v.ensure(
                    v.message()
                        == "case small: wrong answer (interactor): answered 5, the secret was 7",
                    format!("the job's message: {:?}", v.message()),
                );
                v.ensure(
                    v.job["cases_passed"] == 0,
                    format!("no case passes: {}", v.job["cases_passed"]),
                );
                let first = &v.job["cases"][0];
                v.ensure(
                    first["stdout"].as_str().unwrap_or("").contains("? 5\n! 5"),
                    format!(
                        "the case's report keeps what the program wrote: {}",
                        first["stdout"]
                    ),
                );
            },
        ));
    }
    // Volume both ways at once: the interactor sends 2 MiB before it reads the answer, to a
    // program that takes none of it for half a second (the sandbox holds the sender back,
    // as a full pipe would) and then must find every byte, in order.
    v.push(case(
        "cases-interactor-volume",
        "python",
        "passed",
        r#"
limits.output = "8MiB"
code = """
import hashlib, sys, time
n = int(sys.stdin.buffer.readline())
time.sleep(0.5)
data = sys.stdin.buffer.read(n)
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""
cases = [{ name = "two-mib", stdin = "" }]
interactor = { lang = "python", code = """
import hashlib, sys
blob = bytes(range(256)) * 8192
sys.stdout.buffer.write(b"%d\\n" % len(blob) + blob)
sys.stdout.buffer.flush()
got = sys.stdin.readline().split()
want = [str(len(blob)), hashlib.sha256(blob).hexdigest()]
if got != want:
    sys.exit(print(f"got {got[:1]}, want {want[:1]}", file=sys.stderr) or 1)
print(f"{got[0]} bytes", file=sys.stderr)
""" }
"#,
        |v| {
            let said = check_said(&v.job["cases"][0], "interactor");
            v.ensure(
                said == "the interactor accepted: 2097152 bytes",
                format!("the interactor's words: {said:?}"),
            );
        },
    ));
    // An interactor that closes its output (both streams) while it still runs: the program,
    // which reads to the end of its input, must get that end then, and the interactor must
    // still get the program's answer. Kubernetes runs steps through the API's exec, whose
    // stream ends only with the process (README, "Test cases"): not there.
    if backend != "kubernetes" {
        v.push(case(
            "cases-interactor-closes-output",
            "python",
            "passed",
            r#"
timeout = "10s"
code = """
import sys
print(sum(int(line) for line in sys.stdin), flush=True)
"""
cases = [{ name = "four", stdin = "4" }]
interactor = { lang = "python", code = """
import os, sys
n = int(open(sys.argv[1]).read())
sys.stdout.write("".join(f"{i}\\n" for i in range(1, n + 1)))
sys.stdout.flush()
os.close(1)
os.close(2)
sys.exit(0 if sys.stdin.read().split() == [str(n * (n + 1) // 2)] else 1)
""" }
"#,
            |v| {
                let said = check_said(&v.job["cases"][0], "interactor");
                v.ensure(
                    said == "the interactor accepted",
                    format!("the interactor's words: {said:?}"),
                );
            },
        ));
    }
    // An interactor and a checker (how Polygon packages interactive problems): the checker
    // judges the file the interactor wrote to OUTPUT, collected from its sandbox.
    v.push(case(
        "cases-interactor-checker",
        "python",
        "failed",
        r#"
code = """
g = 1
while True:
    print("?", g, flush=True)
    if input() == "=":
        print("!", g, flush=True)
        break
    g += 1
"""
cases = [{ name = "three", stdin = "3" }, { name = "nine", stdin = "9" }]
cases_stop = "never"
interactor = { lang = "python", code = """
import sys
secret, out, asked = int(open(sys.argv[1]).read()), open(sys.argv[2], "w"), 0
while True:
    op, g = sys.stdin.readline().split()
    if op == "!":
        out.write(f"{asked} questions\\n")
        sys.exit(0 if int(g) == secret else 1)
    asked += 1
    print("<" if secret < int(g) else ">" if secret > int(g) else "=", flush=True)
""" }
checker = { lang = "python", code = """
import sys
asked = int(open(sys.argv[2]).read().split()[0])
sys.exit(0 if asked <= 4 else print(f"{asked} questions, more than 4", file=sys.stderr) or 1)
""" }
"#,
        |v| {
            let cases = v.job["cases"].as_array().cloned().unwrap_or_default();
            let seen: Vec<&str> = cases.iter().map(status).collect();
            v.ensure(
                seen == ["passed", "failed"],
                format!("the checker's verdicts on the interactor's files: {seen:?}"),
            );
            v.ensure(
                v.message() == "case nine: wrong answer: 9 questions, more than 4",
                format!("the job's message: {:?}", v.message()),
            );
        },
    ));
    v.push(case(
        "cases-float",
        "python",
        "passed",
        r#"
code = "a, b = map(float, input().split()); print(a / b)"
compare = { float = 1e-6 }
cases = [
  { name = "third", stdin = "1 3", expect.stdout = "0.3333333" },
  { name = "half", stdin = "1 2", expect.stdout = "0.5000000001" },
]
"#,
        |v| {
            v.ensure(
                v.job["cases_total"] == 2 && v.job["cases_passed"] == 2,
                format!("both cases pass: {}", v.job["cases_passed"]),
            );
        },
    ));
    // Resource figures (README, "Resource figures"): measured the same way everywhere.
    v.push(case(
        "resources-busy",
        "python",
        "passed",
        r#"
code = """
import time
b = bytearray(160 * 1024 * 1024)
for i in range(0, len(b), 4096):
    b[i] = 1
t = time.process_time()
while time.process_time() - t < 0.5:
    pass
print("done")
"""
"#,
        |v| {
            let cpu = v.job["cpu_ms"].as_u64();
            v.ensure(
                cpu.is_some_and(|c| (450..3000).contains(&c)),
                format!(
                    "cpu_ms should be about 500 (a 0.5 s spin and the page faults), is {cpu:?}"
                ),
            );
            let peak = v.job["peak_memory_bytes"].as_u64();
            v.ensure(
                peak.is_some_and(|p| (160 << 20..1 << 30).contains(&p)),
                format!("peak_memory_bytes should be at least 160 MiB, is {peak:?}"),
            );
        },
    ));
    v.push(case(
        "resources-small",
        "python",
        "passed",
        r#"code = "print(1)""#,
        |v| {
            let cpu = v.job["cpu_ms"].as_u64();
            v.ensure(
                cpu.is_some_and(|c| c < 400),
                format!("print(1) should use little CPU time, cpu_ms is {cpu:?}"),
            );
            // An exec-per-step sandbox knows its cgroup's peak only when a job raised it:
            // a warm pod, or a warm container without the agent, that ran a larger job
            // before has no figure for this one (README, "Resource figures").
            let peak = v.job["peak_memory_bytes"].as_u64();
            let no_agent = std::env::var("LLM_SANDBOX_DOCKER_AGENT").as_deref() == Ok("0");
            let may_lack = v.backend == "kubernetes" || no_agent;
            v.ensure(
                match peak {
                    Some(p) => (1 << 20..64 << 20).contains(&p),
                    None => may_lack,
                },
                format!("print(1) should report a few MB, peak_memory_bytes is {peak:?}"),
            );
        },
    ));
    v.push(case(
        "cpu-time-limit",
        "python",
        "timeout",
        r#"
timeout = "30s"
limits.cpu_time = "1s"
code = """
while True:
    pass
"""
"#,
        |v| {
            let m = v.message();
            v.ensure(
                m.contains("CPU time"),
                "the message should name the CPU time",
            );
            let ms = v.job["duration_ms"].as_u64().unwrap_or(0);
            v.ensure(
                ms < 15_000,
                format!("the step should end near 1 s of CPU time, took {ms} ms"),
            );
        },
    ));
    v.push(case(
        "cpu-time-total",
        "python",
        "timeout",
        r#"
timeout = "30s"
limits.cpu_time = "1s"
code = """
import os, time
pid = os.fork()
t = time.process_time()
while time.process_time() - t < 0.7:
    pass
if pid:
    os.waitpid(pid, 0)
print("both done")
"""
"#,
        |v| {
            // Two processes, each below the per-process limit, above it together.
            v.ensure(
                v.stdout().contains("both done"),
                "both processes should finish (each is below the per-process limit)",
            );
            v.ensure(
                v.message().contains("CPU time"),
                "the message should say the CPU time was used up",
            );
            let cpu = v.job["cpu_ms"].as_u64();
            v.ensure(
                cpu.is_some_and(|c| c >= 1000),
                format!("cpu_ms should count both processes, is {cpu:?}"),
            );
        },
    ));
    v.push(case(
        "memory-limit",
        "python",
        "failed",
        r#"
limits.memory = "128MiB"
code = '''
x = []
while True:
    x.append(b"x" * (16 << 20))
'''
"#,
        |v| {
            v.ensure(
                v.message().contains("memory limit"),
                "the message should mention the memory limit",
            );
        },
    ));
    v.push(case(
        "output-limit",
        "python",
        "failed",
        r#"
limits.output = "64KiB"
code = '''
import sys
for _ in range(64):
    sys.stdout.write("y" * 16384)
'''
"#,
        |v| {
            v.ensure(
                v.message().contains("output limit"),
                "the message should mention the output limit",
            );
            let n = v.stdout().len();
            v.ensure(
                n > 0 && n <= 64 * 1024,
                format!("the kept stdout ({n} bytes) should be the first ≤ 64KiB"),
            );
            v.ensure(
                v.stdout().bytes().all(|b| b == b'y'),
                "the kept stdout is the program's",
            );
            v.ensure(
                v.job["stdout_truncated"] == true,
                "stdout_truncated should be true",
            );
        },
    ));
    v.push(case(
        "output-large",
        "python",
        "passed",
        r#"
code = '''
import sys
print("héllo ✓ 世界")
for i in range(20000):
    print(f"line {i:05d}")
for i in range(1000):
    print(f"err {i:04d}", file=sys.stderr)
'''
"#,
        |v| {
            let mut out = String::from("héllo ✓ 世界\n");
            for i in 0..20000 {
                out.push_str(&format!("line {i:05}\n"));
            }
            let err: String = (0..1000).map(|i| format!("err {i:04}\n")).collect();
            v.ensure(
                v.stdout() == out,
                format!(
                    "stdout should be the {} bytes written, exactly (got {})",
                    out.len(),
                    v.stdout().len()
                ),
            );
            v.ensure(
                v.stderr() == err,
                format!(
                    "stderr should be the {} bytes written, exactly (got {})",
                    err.len(),
                    v.stderr().len()
                ),
            );
            v.ensure(
                v.job["stdout_truncated"] == false,
                "stdout_truncated should be false",
            );
        },
    ));
    v.push(case(
        "pids-limit",
        "python",
        "passed",
        r#"
limits.pids = 32
code = '''
import os, time
n = 0
try:
    while n < 200:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
    print("forked", n)
except OSError as e:
    print("pids limited after", n, type(e).__name__)
'''
expect.stdout_regex = '^pids limited after \d+ '
"#,
        |v| {
            let n = numbers_after(v.stdout(), "pids limited after ");
            v.ensure(
                n.len() == 1 && n[0] > 0 && n[0] < 32,
                format!("forks before the limit: {n:?} (want 1..31)"),
            );
            let ms = v.job["duration_ms"].as_u64().unwrap_or(u64::MAX);
            v.ensure(
                ms < 10_000,
                format!("the forked sleepers outlived the program ({ms} ms)"),
            );
        },
    ));
    v.push(case(
        "disk-limit",
        "bash",
        "passed",
        r#"
limits.disk = "16MiB"
code = '''
for d in /sandbox /tmp; do
  if dd if=/dev/zero of=$d/big bs=1M count=64 2>/dev/null; then
    echo "$d: wrote 64MiB"
  else
    echo "$d: write failed after $(( $(stat -c %s $d/big) / 1048576 ))MiB"
  fi
  rm -f $d/big
done
'''
expect.stdout_regex = '^/sandbox: write failed after \d+MiB\n/tmp: write failed after \d+MiB\n$'
"#,
        |v| {
            for dir in ["/sandbox", "/tmp"] {
                let n = numbers_after(v.stdout(), &format!("{dir}: write failed after "));
                v.ensure(
                    n.len() == 1 && n[0] <= 16,
                    format!("{dir}: MiB written before the 16MiB limit: {n:?}"),
                );
            }
        },
    ));
    v.push(case(
        "network-off",
        "python",
        "passed",
        r#"
code = '''
import socket
names = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
print("interfaces:", " ".join(names))
for host, port in [("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("connected", host)
    except OSError:
        print("unreachable", host)
'''
expect.stdout = "interfaces: lo\nunreachable 1.1.1.1\nunreachable 8.8.8.8"
"#,
        |_| {},
    ));
    v.push(case(
        "non-root",
        "bash",
        "passed",
        r#"
code = "id -u"
"#,
        |v| {
            let uid: Option<u32> = v.stdout().trim().parse().ok();
            v.ensure(
                uid.is_some_and(|u| u != 0),
                format!("`id -u` should be a non-zero uid: {:?}", v.stdout()),
            );
        },
    ));
    v
}

/// What a case's check of `kind` (`checker`, `interactor`) said ("" without one).
fn check_said(case: &Value, kind: &str) -> String {
    case["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["kind"] == kind))
        .and_then(|k| k["message"].as_str())
        .unwrap_or("")
        .to_string()
}

/// The job file of `cases`.
fn job_file(cases: &[Case]) -> String {
    let mut f = String::from(
        "# The conformance suite (tests/integration/conformance.rs).\n[defaults]\ntimeout = \"20s\"\n",
    );
    for c in cases {
        f.push_str(&format!(
            "\n[[jobs]]\nname = \"{}\"\nlang = \"{}\"\n{}\n",
            c.name,
            c.lang,
            c.toml.trim()
        ));
    }
    f
}

fn conformance(backend: &str) {
    if !backend_selected(backend) {
        let explicit =
            std::env::var("LLM_SANDBOX_TEST_BACKENDS").is_ok_and(|v| !v.trim().is_empty());
        let how = match backend {
            _ if explicit => "not named in LLM_SANDBOX_TEST_BACKENDS",
            "docker" => "docker is unavailable (see the SKIPPED line above)",
            "podman" => "podman is unavailable (see the SKIPPED line above)",
            _ => "name it in LLM_SANDBOX_TEST_BACKENDS to test it",
        };
        common::skipped(format!("{backend} conformance: {how}"));
        return;
    }
    let cases = cases(backend);
    let s = Scratch::new();
    for (rel, content) in INPUTS {
        s.write(rel, content);
    }
    s.write("conformance.toml", &job_file(&cases));
    let arts = s.path().join("artifacts");
    // kubernetes: against examples/fake-apiserver, through KUBECONFIG.
    let fake = (backend == "kubernetes").then(common::FakeCluster::start);
    let mut cmd = s.cmd();
    if let Some(f) = &fake {
        cmd.env("KUBECONFIG", &f.kubeconfig);
    }
    let r: Run = common::run_report(
        cmd.env("LLM_SANDBOX_TEST_SECRET", SECRET)
            .args(["run", "--no-progress", "-j", "2", "--backend", backend])
            .args(["--json", "-", "--artifacts"])
            .arg(&arts)
            .arg("conformance.toml"),
    );

    let mut errors = Vec::new();
    let jobs = r.jobs();
    for c in &cases {
        let Some(j) = jobs.get(&c.name) else {
            errors.push(format!("[{backend}] {}: missing from the report", c.name));
            continue;
        };
        let mut v = Verdict {
            backend,
            name: &c.name,
            job: j,
            dir: s.path(),
            errors: &mut errors,
        };
        v.ensure(
            status(j) == c.status,
            format!("status should be {}, is {}", c.status, status(j)),
        );
        v.ensure(
            j["backend"] == backend,
            format!("the report's backend is {}", j["backend"]),
        );
        v.ensure(
            j["lang"] == c.lang,
            format!("the report's lang is {}, not {}", j["lang"], c.lang),
        );
        v.ensure(
            !common::text(j).contains(SECRET),
            "the runner's environment leaked into the job",
        );
        (c.verify)(&mut v);
    }
    for name in jobs.keys() {
        if !cases.iter().any(|c| &c.name == name) {
            errors.push(format!("[{backend}] {name}: not a case of the suite"));
        }
    }
    if r.code != 1 {
        errors.push(format!(
            "[{backend}] the run's exit code is {}, want 1 (some cases fail by design)",
            r.code
        ));
    }
    if !errors.is_empty() {
        panic!(
            "{backend}: {} conformance mismatch(es) in {} jobs:\n\n{}\n\nstderr of the run:\n{}",
            errors.len(),
            cases.len(),
            errors.join("\n\n"),
            r.stderr
        );
    }
}
