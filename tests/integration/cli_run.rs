//! End-to-end tests of `llm-sandbox run`: they drive the built binary on small job files
//! (written to a temporary directory, or under tests/fixtures/run/) with the default
//! `native` backend, and inspect the JSON report (`--json -` / `--json FILE`), the JUnit
//! report (`--junit FILE`), the artifacts directory and the exit code.

use crate::common;

use assert_cmd::prelude::*;
use common::{check, Scratch};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/run");

fn approx(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

#[test]
fn judge_whitespace_stdin_args_env() {
    let s = Scratch::new();
    s.write(
        "io.toml",
        r#"
[vars]
word = "templated"

[defaults]
lang = "python"

[[jobs]]
name = "judge-ignores-trailing-space"
code = 'print("a  \nb\t\n\n\n", end="")'
expect.stdout = "a\nb"

[[jobs]]
name = "judge-keeps-leading-space"
code = 'print("a\nb")'
expect.stdout = " a\nb"

[[jobs]]
name = "exact-is-exact"
code = 'print("a  \nb")'
expect.stdout_exact = "a\nb\n"

[[jobs]]
name = "exact-passes"
code = 'print("a  \nb")'
expect.stdout_exact = "a  \nb\n"

[[jobs]]
name = "stdin"
lang = "bash"
stdin = "first line\nsecond line\n"
code = 'tac; echo "lines=$(printf x | wc -c)"'
expect.stdout = "second line\nfirst line\nlines=1"

[[jobs]]
name = "args"
args = ["two words", "--flag", "{{ word }}", ""]
code = 'import sys, json; print(json.dumps(sys.argv[1:]))'
expect.stdout = '["two words", "--flag", "templated", ""]'

[[jobs]]
name = "env"
env = { GREETING = "hello world", RENDERED = "{{ word }}" }
code = 'import os; print(os.environ["GREETING"], os.environ["RENDERED"], sep="|")'
expect.stdout = "hello world|templated"
"#,
    );
    let r = s.run_json(&["io.toml"]);
    assert_eq!(r.code, 1, "two jobs fail on purpose");
    r.assert_status("judge-ignores-trailing-space", "passed");
    let j = r.assert_status("judge-keeps-leading-space", "failed");
    assert_eq!(check(j, "stdout")["passed"], false);
    let j = r.assert_status("exact-is-exact", "failed");
    let c = check(j, "stdout_exact");
    assert_eq!(c["passed"], false);
    assert_eq!(j["stdout"], "a  \nb\n");
    r.assert_status("exact-passes", "passed");
    r.assert_status("stdin", "passed");
    let j = r.assert_status("args", "passed");
    assert_eq!(
        j["stdout"],
        "[\"two words\", \"--flag\", \"templated\", \"\"]\n"
    );
    r.assert_status("env", "passed");
    assert_eq!(r.summary("total"), 7);
    assert_eq!(r.summary("passed"), 5);
    assert_eq!(r.summary("failed"), 2);
}

#[test]
fn literal_braces_in_code_are_not_rendered() {
    let s = Scratch::new();
    s.write(
        "braces.toml",
        r#"
[[jobs]]
name = "braces"
lang = "python"
code = '''
d = {"k": {"v": 1}}
print("{{ undefined_var }} {% if x %}", d)
'''
stdin = "{% raw %}{{ kept }}{% endraw %}"
expect.stdout_contains = "{% raw %}{{ undefined_var }} {% if x %}{% endraw %}"
"#,
    );
    let r = s.run_json(&["braces.toml"]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    let j = r.assert_status("braces", "passed");
    assert_eq!(
        j["stdout"],
        "{{ undefined_var }} {% if x %} {'k': {'v': 1}}\n"
    );
}

#[test]
fn template_file_code_file_and_datasets() {
    let s = Scratch::new();
    let fixture = format!("{FIXTURES}/sources.toml");
    let r = s.run_json(&[&fixture]);
    assert_eq!(r.code, 0, "{}\n{}", r.pretty(), r.stderr);
    assert_eq!(
        r.names(),
        [
            "from-template-file",
            "from-code-file",
            "csv-0-Ada",
            "csv-1-Linus",
            "csv-2-Grace",
            "jsonl-t-a",
            "jsonl-t-b"
        ]
    );
    assert_eq!(r.job("from-template-file")["stdout"], "Hi 0\nHi 1\n");
    // code_file is never rendered: its braces reach the compiler and the output.
    assert_eq!(r.job("from-code-file")["stdout"], "{{ braces }} 42\n");
    assert_eq!(r.job("from-code-file")["lang"], "c");
    // CSV: {{ index }} is the 0-based row, quoted fields keep their comma.
    assert_eq!(r.job("csv-1-Linus")["stdout"], "1|Linus|28|Helsinki, FI\n");
    assert_eq!(r.job("csv-2-Grace")["stdout"], "2|Grace|45|Arlington\n");
    // JSONL: numbers stay numbers in the template.
    assert_eq!(r.job("jsonl-t-a")["stdout"], "5 0\n");
    assert_eq!(r.job("jsonl-t-b")["stdout"], "6 1\n");
    for j in r.report["jobs"].as_array().unwrap() {
        assert!(
            j["file"].as_str().unwrap().ends_with("sources.toml"),
            "{j:#}"
        );
    }
}

#[test]
fn matrix_expands_every_combination() {
    let s = Scratch::new();
    s.write(
        "matrix.yaml",
        r#"
jobs:
  - name: "m-{{ matrix.size }}-{{ matrix.op }}"
    lang: bash
    matrix:
      size: [2, 3]
      op: [add, mul]
    template: |
      {% if matrix.op == "add" %}echo $(( {{ matrix.size }} + {{ matrix.size }} )) {{ index }}
      {% else %}echo $(( {{ matrix.size }} * {{ matrix.size }} )) {{ index }}{% endif %}
    expect:
      stdout_regex: '^\d+ [0-3]\n$'
"#,
    );
    let r = s.run_json(&["matrix.yaml"]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    let mut names = r.names();
    names.sort();
    assert_eq!(names, ["m-2-add", "m-2-mul", "m-3-add", "m-3-mul"]);
    let out = |n: &str| {
        r.job(n)["stdout"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(out("m-2-add"), "4");
    assert_eq!(out("m-2-mul"), "4");
    assert_eq!(out("m-3-add"), "6");
    assert_eq!(out("m-3-mul"), "9");
    // index: the combination's position, each used once.
    let mut idx: Vec<String> = r.report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            j["stdout"]
                .as_str()
                .unwrap()
                .trim()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2", "3"]);
}

/// g1: 4 samples, 2 pass; g2: 4 samples, 1 passes.
const GROUPS: &str = r#"
[[jobs]]
name = "{{ matrix.g }}-{{ matrix.i }}"
lang = "bash"
group = "task/{{ matrix.g }}"
matrix = { g = ["g1", "g2"], i = [0, 1, 2, 3] }
template = '''
{% if (matrix.g == "g1" and matrix.i < 2) or (matrix.g == "g2" and matrix.i == 0) %}echo ok{% else %}echo wrong{% endif %}
'''
expect.stdout = "ok"
"#;

#[test]
fn groups_and_pass_at_k() {
    let s = Scratch::new();
    s.write("groups.toml", GROUPS);
    let r = s.run_json(&["groups.toml", "--pass-at", "1,2,4"]);
    assert_eq!(r.code, 1, "some samples fail");
    assert_eq!(r.summary("passed"), 3);
    assert_eq!(r.summary("failed"), 5);
    let groups = r.report["groups"].as_array().expect("groups[]");
    assert_eq!(groups.len(), 2, "{}", r.pretty());
    let g = |key: &str| groups.iter().find(|g| g["key"] == key).unwrap().clone();
    let g1 = g("task/g1");
    assert_eq!(g1["n"], 4);
    assert_eq!(g1["passed"], 2);
    // pass@k = 1 - C(n-c, k) / C(n, k)
    assert!(approx(&g1["pass_at"]["1"], 0.5), "{g1}");
    assert!(approx(&g1["pass_at"]["2"], 1.0 - 1.0 / 6.0), "{g1}");
    assert!(approx(&g1["pass_at"]["4"], 1.0), "{g1}");
    let g2 = g("task/g2");
    assert_eq!(g2["n"], 4);
    assert_eq!(g2["passed"], 1);
    assert!(approx(&g2["pass_at"]["1"], 0.25), "{g2}");
    assert!(approx(&g2["pass_at"]["2"], 0.5), "{g2}");
    assert!(approx(&g2["pass_at"]["4"], 1.0), "{g2}");
    // The top-level value is the mean over groups.
    let top = &r.report["pass_at"];
    assert!(approx(&top["1"], 0.375), "{top}");
    assert!(approx(&top["2"], (5.0 / 6.0 + 0.5) / 2.0), "{top}");
    assert!(approx(&top["4"], 1.0), "{top}");
    // The jobs carry their group key.
    assert_eq!(r.job("g2-3")["group"], "task/g2");
}

#[test]
fn pass_at_defaults_to_1_without_enough_samples_for_10() {
    let s = Scratch::new();
    s.write("groups.toml", GROUPS);
    let r = s.run_json(&["groups.toml"]);
    let top = r.report["pass_at"].as_object().expect("pass_at");
    assert_eq!(top.keys().collect::<Vec<_>>(), ["1"], "{}", r.pretty());
    assert!(approx(&top["1"], 0.375));
    // No groups at all: no pass@k in the report.
    s.write(
        "plain.toml",
        "[[jobs]]\nname = \"plain\"\nlang = \"bash\"\ncode = \"true\"\n",
    );
    let r = s.run_json(&["plain.toml"]);
    assert_eq!(r.code, 0);
    assert!(
        r.report.get("groups").is_none_or(Value::is_null),
        "{}",
        r.pretty()
    );
    assert!(
        r.report.get("pass_at").is_none_or(Value::is_null),
        "{}",
        r.pretty()
    );
}

#[test]
fn input_files_artifacts_and_file_checks() {
    let s = Scratch::new();
    s.write("inputs/numbers.csv", "n\n1\n2\n3\n");
    s.write("inputs/config.txt", "factor=10\n");
    s.write(
        "files.toml",
        r#"
[defaults]
lang = "python"
files = ["inputs/numbers.csv", { src = "inputs/config.txt", dest = "conf/settings.txt" }]
artifacts = ["out/*.json", "report.txt"]
code = '''
import csv, json, os
factor = int(open("conf/settings.txt").read().split("=")[1])
nums = [int(r["n"]) for r in csv.DictReader(open("inputs/numbers.csv"))]
os.makedirs("out", exist_ok=True)
json.dump({"total": sum(nums) * factor, "count": len(nums)}, open("out/result.json", "w"))
open("out/notes.txt", "w").write("not an artifact\n")
open("report.txt", "w").write("hello\n")
open("scratch.log", "w").write("debug\n")
print("done")
'''

[[jobs]]
name = "files-ok"
expect.stdout = "done"
expect.files."out/result.json" = { json = { total = 60, count = 3 } }
expect.files."report.txt" = { equals = "hello\n", contains = "ell", regex = '(?m)^h\w+$', sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03" }
expect.files."missing.txt" = { exists = false }
expect.files."scratch.log" = { exists = true }

[[jobs]]
name = "files-wrong"
expect.files."out/result.json" = { json = { total = 61, count = 3 } }
expect.files."report.txt" = { equals = "bye\n", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" }
expect.files."scratch.log" = { exists = false }
"#,
    );
    let arts = s.path().join("arts");
    let r = s.run_json(&["files.toml", "--artifacts", arts.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    let ok = r.assert_status("files-ok", "passed");
    for kind in [
        "file.json",
        "file.equals",
        "file.contains",
        "file.regex",
        "file.sha256",
        "file.exists",
    ] {
        assert_eq!(check(ok, kind)["passed"], true, "{kind}: {ok:#}");
    }
    // Artifacts: only the matching files, under DIR/<job name>/, listed in the report.
    let dir = arts.join("files-ok");
    assert_eq!(
        std::fs::read_to_string(dir.join("report.txt")).unwrap(),
        "hello\n"
    );
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/result.json")).unwrap())
            .unwrap();
    assert_eq!(result, serde_json::json!({"total": 60, "count": 3}));
    assert!(!dir.join("out/notes.txt").exists());
    assert!(!dir.join("scratch.log").exists());
    let listed: Vec<&str> = ok["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .any(|a| a.ends_with("files-ok/out/result.json")));
    assert!(listed.iter().any(|a| a.ends_with("files-ok/report.txt")));
    assert!(arts.join("files-wrong/report.txt").exists());

    let bad = r.assert_status("files-wrong", "failed");
    let failed: Vec<&str> = bad["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    for kind in ["file.json", "file.equals", "file.sha256", "file.exists"] {
        assert!(failed.contains(&kind), "{kind} should fail: {bad:#}");
    }
    assert!(check(bad, "file.exists")["message"]
        .as_str()
        .unwrap()
        .contains("scratch.log"));
}

#[test]
fn skipped_jobs_do_not_fail_the_run() {
    let s = Scratch::new();
    s.write(
        "skip.yaml",
        r#"
jobs:
  - name: runs
    lang: bash
    code: echo hi
    expect: { stdout: hi }
  - name: later
    lang: bash
    skip: flaky upstream service
    code: exit 1
"#,
    );
    let r = s.run_json(&["skip.yaml"]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    r.assert_status("runs", "passed");
    let j = r.assert_status("later", "skipped");
    assert!(
        j["message"]
            .as_str()
            .unwrap_or_default()
            .contains("flaky upstream service"),
        "{j:#}"
    );
    assert_eq!(r.summary("skipped"), 1);
    assert_eq!(r.summary("passed"), 1);
}

#[test]
fn compile_errors_fail_in_the_compile_phase() {
    let s = Scratch::new();
    s.write(
        "broken.toml",
        r#"
[[jobs]]
name = "c-syntax"
lang = "c"
code = '''
int main(void) { return 0 }
'''

[[jobs]]
name = "java-types"
lang = "java"
timeout = "60s"
code = '''
public class Main {
    public static void main(String[] args) {
        int x = "not a number";
    }
}
'''
"#,
    );
    let r = s.run_json(&["broken.toml"]);
    assert_eq!(r.code, 1);
    let c = r.assert_status("c-syntax", "failed");
    assert_eq!(c["phase"], "compile", "{c:#}");
    let err = c["stderr"].as_str().unwrap();
    assert!(
        err.contains("error") && err.contains("expected") && err.contains("main.c:1"),
        "gcc's message: {err}"
    );
    let j = r.assert_status("java-types", "failed");
    assert_eq!(j["phase"], "compile", "{j:#}");
    let err = j["stderr"].as_str().unwrap();
    assert!(err.contains("incompatible types"), "javac's message: {err}");
    assert_eq!(j["stdout"], "");
}

#[test]
fn timeouts_kill_busy_and_sleeping_programs() {
    let s = Scratch::new();
    s.write(
        "slow.toml",
        r#"
[defaults]
timeout = "1s"

[[jobs]]
name = "busy"
lang = "python"
code = '''
print("started", flush=True)
while True:
    pass
'''

[[jobs]]
name = "sleeping"
lang = "bash"
code = "echo started; sleep 60; echo never"

[[jobs]]
name = "sleeping-child"
lang = "bash"
code = "(sleep 60; echo orphan) & wait"
"#,
    );
    let r = s.run_json(&["slow.toml", "-j", "3"]);
    assert_eq!(r.code, 1);
    for name in ["busy", "sleeping", "sleeping-child"] {
        let j = r.assert_status(name, "timeout");
        let ms = j["duration_ms"].as_u64().unwrap();
        assert!((900..3000).contains(&ms), "{name}: {ms} ms");
        let msg = j["message"].as_str().unwrap();
        assert!(msg.contains("timed out") && msg.contains("1s"), "{msg}");
    }
    assert_eq!(r.job("busy")["stdout"], "started\n");
    assert_eq!(r.job("sleeping")["stdout"], "started\n");
    assert_eq!(r.summary("timeout"), 3);
    assert!(r.wall < Duration::from_secs(8), "run took {:?}", r.wall);
}

#[test]
fn expected_exit_codes() {
    let s = Scratch::new();
    s.write(
        "exit.toml",
        r#"
[defaults]
lang = "bash"
code = "echo out; echo err >&2; exit 3"

[[jobs]]
name = "expects-3"
expect.exit_code = 3
expect.stderr = "err"

[[jobs]]
name = "expects-0"
"#,
    );
    let r = s.run_json(&["exit.toml"]);
    assert_eq!(r.code, 1);
    let j = r.assert_status("expects-3", "passed");
    assert_eq!(j["exit_code"], 3);
    assert_eq!(j["stderr"], "err\n");
    let j = r.assert_status("expects-0", "failed");
    assert_eq!(j["exit_code"], 3);
    let c = check(j, "exit_code");
    assert_eq!(c["passed"], false);
    assert!(c["message"].as_str().unwrap().contains('3'), "{c}");

    // Only passing jobs: exit code 0.
    let r = s.run_json(&["exit.toml", "--filter", "expects-3"]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    assert_eq!(r.names(), ["expects-3"]);
}

const SELECT: &str = r#"
[vars]
who = "World"

[defaults]
lang = "bash"

[[jobs]]
name = "alpha-one"
template = "echo 'Hello, {{ who }}!'"
expect.stdout = "Hello, {{ who }}!"

[[jobs]]
name = "alpha-two"
code = "echo two"

[[jobs]]
name = "beta"
tags = ["slow", "net"]
code = "echo beta"
"#;

#[test]
fn filter_by_glob_and_tag() {
    let s = Scratch::new();
    s.write("select.toml", SELECT);
    let r = s.run_json(&["select.toml", "--filter", "alpha-*"]);
    assert_eq!(r.names(), ["alpha-one", "alpha-two"]);
    assert_eq!(r.summary("total"), 2);
    let r = s.run_json(&["select.toml", "--filter", "tag:slow"]);
    assert_eq!(r.names(), ["beta"]);
    // Repeated filters: any match selects.
    let r = s.run_json(&["select.toml", "--filter", "tag:net", "--filter", "*-two"]);
    assert_eq!(r.names(), ["alpha-two", "beta"]);
    assert_eq!(r.code, 0);
}

#[test]
fn var_overrides_file_vars() {
    let s = Scratch::new();
    s.write("select.toml", SELECT);
    let r = s.run_json(&[
        "select.toml",
        "--filter",
        "alpha-one",
        "--var",
        "who=Sandbox",
    ]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    let j = r.assert_status("alpha-one", "passed");
    assert_eq!(j["stdout"], "Hello, Sandbox!\n");
}

#[test]
fn fail_fast_stops_scheduling() {
    let s = Scratch::new();
    s.write(
        "ff.toml",
        r#"
[defaults]
lang = "bash"

[[jobs]]
name = "a-fails"
code = "exit 1"

[[jobs]]
name = "b"
code = "echo b"

[[jobs]]
name = "c"
code = "echo c"
"#,
    );
    let r = s.run_json(&["ff.toml", "-j", "1", "--fail-fast"]);
    assert_eq!(r.code, 1);
    r.assert_status("a-fails", "failed");
    for name in ["b", "c"] {
        let j = r.job(name);
        assert_ne!(j["status"], "passed", "{name} must not run: {j:#}");
        assert_eq!(j["stdout"], "", "{name} must not run: {j:#}");
    }
    // Without --fail-fast every job runs.
    let r = s.run_json(&["ff.toml", "-j", "1"]);
    r.assert_status("b", "passed");
    r.assert_status("c", "passed");
}

#[test]
fn one_job_at_a_time_with_j1() {
    let s = Scratch::new();
    s.write(
        "seq.toml",
        r#"
[[jobs]]
name = "sleep-{{ matrix.i }}"
lang = "bash"
matrix = { i = [1, 2, 3] }
code = "sleep 0.6"
"#,
    );
    let r = s.run_json(&["seq.toml", "-j", "1"]);
    assert_eq!(r.code, 0, "{}", r.pretty());
    let run_ms = r.report["duration_ms"].as_u64().unwrap();
    assert!(run_ms >= 1800, "-j 1 ran the jobs in parallel: {run_ms} ms");
    let r = s.run_json(&["seq.toml", "-j", "3"]);
    assert_eq!(r.code, 0);
    let run_ms = r.report["duration_ms"].as_u64().unwrap();
    assert!(run_ms < 1800, "-j 3 ran the jobs one by one: {run_ms} ms");
}

fn compile_schema(path: &str) -> jsonschema::JSONSchema {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e} (run `cargo run -- schema report > {path}`)"));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::JSONSchema::compile(&schema).expect("the schema compiles")
}

const MIXED: &str = r#"
[defaults]
lang = "bash"

[[jobs]]
name = "ok"
group = "g"
code = "echo '<ok & fine>'"
expect.stdout = "<ok & fine>"

[[jobs]]
name = "wrong"
group = "g"
code = "echo nope; echo 'warn' >&2"
expect.stdout = "yes"

[[jobs]]
name = "slow"
timeout = "300ms"
code = "sleep 10"

[[jobs]]
name = "later"
skip = "not today"
code = "true"
"#;

#[test]
fn json_report_file_validates_against_the_schema() {
    let s = Scratch::new();
    s.write("mixed.toml", MIXED);
    let out = s.path().join("reports/report.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let assert = s
        .cmd()
        .args(["run", "mixed.toml", "--no-progress", "--json"])
        .arg(&out)
        .assert()
        .code(1);
    // With --json FILE, stdout carries no report.
    assert!(!String::from_utf8_lossy(&assert.get_output().stdout).contains("\"summary\""));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let schema = compile_schema("schemas/report.schema.json");
    if let Err(errors) = schema.validate(&report) {
        let msgs: Vec<String> = errors
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        panic!("the report does not match schemas/report.schema.json:\n{msgs:#?}");
    }
    assert_eq!(report["version"], 1);
    assert!(report["started_at"].as_str().unwrap().contains('T'));
    let summary = &report["summary"];
    assert_eq!(summary["total"], 4);
    assert_eq!(summary["passed"], 1);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["timeout"], 1);
    assert_eq!(summary["skipped"], 1);
    assert_eq!(summary["error"], 0);
    for j in report["jobs"].as_array().unwrap() {
        assert_eq!(j["backend"], "native");
        assert_eq!(j["lang"], "bash");
        assert_eq!(j["file"], "mixed.toml");
    }
    // The schema rejects what is not a report.
    let mut broken = report.clone();
    broken["jobs"][0]["status"] = "exploded".into();
    assert!(!schema.is_valid(&broken));
}

#[test]
fn junit_report_parses_with_the_right_counts() {
    let s = Scratch::new();
    s.write("mixed.toml", MIXED);
    s.write(
        "more.yaml",
        "jobs:\n  - name: other\n    lang: bash\n    code: echo other\n",
    );
    let out = s.path().join("junit.xml");
    s.cmd()
        .args(["run", "mixed.toml", "more.yaml", "--no-progress", "--junit"])
        .arg(&out)
        .assert()
        .code(1);
    let xml = std::fs::read_to_string(&out).unwrap();
    let report = quick_junit::Report::deserialize_from_str(&xml)
        .unwrap_or_else(|e| panic!("JUnit XML does not parse: {e}\n{xml}"));
    assert_eq!(report.tests, 5, "{xml}");
    assert_eq!(report.failures, 1, "{xml}");
    assert_eq!(report.errors, 1, "the timeout is an error: {xml}");
    assert_eq!(report.test_suites.len(), 2, "one suite per job file: {xml}");
    let suite = report
        .test_suites
        .iter()
        .find(|t| t.name.as_str() == "mixed.toml")
        .expect("suite mixed.toml");
    assert_eq!(suite.tests, 4);
    assert_eq!(suite.failures, 1);
    assert_eq!(suite.errors, 1);
    let case = |name: &str| {
        suite
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == name)
            .unwrap_or_else(|| panic!("no testcase {name}: {xml}"))
    };
    for c in &suite.test_cases {
        assert_eq!(c.classname.as_ref().map(|s| s.as_str()), Some("mixed.toml"));
        assert!(c.time.is_some(), "testcase {:?} has no time", c.name);
    }
    use quick_junit::{NonSuccessKind, TestCaseStatus};
    assert!(matches!(case("ok").status, TestCaseStatus::Success { .. }));
    match &case("wrong").status {
        TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Failure,
            message,
            description,
            ..
        } => {
            let message = message.as_ref().map(|m| m.as_str()).unwrap_or_default();
            assert!(message.contains("stdout"), "{message}");
            // The body has the failed checks and a diff.
            let body = description.as_ref().map(|d| d.as_str()).unwrap_or_default();
            assert!(body.contains("-yes") && body.contains("+nope"), "{body}");
        }
        other => panic!("wrong: {other:?}"),
    }
    assert!(matches!(
        case("slow").status,
        TestCaseStatus::NonSuccess {
            kind: NonSuccessKind::Error,
            ..
        }
    ));
    assert!(matches!(
        case("later").status,
        TestCaseStatus::Skipped { .. }
    ));
    assert_eq!(
        case("wrong").system_err.as_ref().map(|s| s.as_str().trim()),
        Some("warn")
    );
    // Raw XML: markup in the output is escaped, skipped is counted.
    assert!(xml.contains("&lt;ok &amp; fine&gt;"), "{xml}");
    assert!(xml.contains("skipped=\"1\""), "{xml}");
}

#[test]
fn isolation_smoke_checks() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = Scratch::new();
    s.write(
        "isolation.toml",
        r#"
[[jobs]]
name = "shadow"
lang = "bash"
code = "cat /etc/shadow && echo READ-SHADOW; exit 0"
expect.stdout = ""

[[jobs]]
name = "root-home"
lang = "bash"
code = "ls -a /root >/dev/null 2>&1 && echo SEES-ROOT || echo no-root"
expect.stdout = "no-root"

[[jobs]]
name = "runner-env"
lang = "bash"
code = 'echo "secret=${LLM_SANDBOX_TEST_SECRET:-unset}"'
expect.stdout = "secret=unset"

[[jobs]]
name = "uid"
lang = "bash"
code = "id -u; id -g"
expect.stdout = "1000\n1000"

[[jobs]]
name = "loopback"
lang = "python"
timeout = "10s"
template = '''
import socket
try:
    socket.create_connection(("127.0.0.1", {{ port }}), timeout=3).close()
    print("CONNECTED")
except OSError as e:
    print("blocked", type(e).__name__)
'''
expect.stdout_regex = '^blocked \w+'
"#,
    );
    let out = s
        .cmd()
        .env("LLM_SANDBOX_TEST_SECRET", "hunter2")
        .args(["run", "isolation.toml", "--no-progress", "--json", "-"])
        .args(["--var", &format!("port={port}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("hunter2"),
        "the runner's env leaked: {stdout}"
    );
    assert!(
        !stdout.contains("READ-SHADOW") && !stdout.contains("root:"),
        "{stdout}"
    );
    assert!(!stdout.contains("CONNECTED"), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    for j in report["jobs"].as_array().unwrap() {
        assert_eq!(j["status"], "passed", "{j:#}");
    }
    assert_eq!(out.status.code(), Some(0));
    // Nothing ever reached the listener.
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the sandbox connected to the host's loopback"
    );
}

/// A failure's reasons are said once: on the terminal (the job's message, then only each
/// check's diff) and in JUnit's `message` attribute.
#[test]
fn a_failure_is_explained_once() {
    let s = Scratch::new();
    s.write(
        "twice.yaml",
        "jobs:\n  - { name: twice, lang: bash, code: 'exit 1', expect: { stdout: ok } }\n",
    );
    let out = s
        .cmd()
        .args(["run", "--no-progress", "--junit", "r.xml", "twice.yaml"])
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stderr);
    for said in ["exit code 1, expected 0", "stdout is empty, expected `ok`"] {
        assert_eq!(terminal.matches(said).count(), 1, "{said}:\n{terminal}");
    }
    assert!(
        terminal.contains("-ok"),
        "the diff is still shown:\n{terminal}"
    );
    let xml = std::fs::read_to_string(s.path().join("r.xml")).unwrap();
    let message = xml
        .split("message=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(
        message.matches("exit code 1, expected 0").count(),
        1,
        "{message}"
    );
    assert_eq!(message.matches("stdout is empty").count(), 1, "{message}");
}

/// `--var` with a name no job file uses is said (a typo would silently change nothing);
/// one a file uses is not.
#[test]
fn an_unused_var_is_warned_about() {
    let s = Scratch::new();
    s.write(
        "vars.toml",
        "[vars]\ngreeting = \"hi\"\n\n[[jobs]]\nname = \"v\"\nlang = \"bash\"\ntemplate = \"echo {{ greeting }}\"\n",
    );
    let run = |var: &str| {
        let out = s
            .cmd()
            .args(["run", "--no-progress", "--var", var, "vars.toml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("greting=hello");
    assert!(
        err.contains("warning: --var greting: no job file uses a variable `greting` (the variables they define: greeting)"),
        "{err}"
    );
    assert!(!run("greeting=hello").contains("warning"));
}

/// A limit written without a unit below 1 MiB is bytes, never meant: the unit is asked for,
/// before anything runs.
#[test]
fn a_size_without_a_unit_asks_for_one() {
    let s = Scratch::new();
    s.write(
        "mem.toml",
        "[[jobs]]\nname = \"m\"\nlang = \"bash\"\ncode = \"true\"\nlimits = { memory = 512 }\n",
    );
    let out = s
        .cmd()
        .args(["run", "--no-progress", "mem.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("mem.toml:5:") && err.contains("\"512MiB\""),
        "{err}"
    );
}

/// A run that ends leaves nothing of its own for the next run to sweep: no directory
/// below the runner's private root, no cgroup of its sandbox servers.
#[test]
fn a_finished_run_leaves_nothing_behind() {
    let s = Scratch::new();
    s.write(
        "one.yaml",
        "jobs:\n  - { name: a, lang: bash, code: 'echo a' }\n  - { name: b, lang: bash, code: 'echo b' }\n",
    );
    let child = s
        .cmd()
        .args(["run", "--no-progress", "-q", "one.yaml"])
        .spawn()
        .unwrap();
    let mine = format!("ls-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let root = llm_sandbox::owner::runs_root_path();
    let left: Vec<String> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&mine))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", root.display());
    if let Ok(mode) = llm_sandbox::sandbox::cgroup::detect() {
        let cgroups = mode.owned_dirs(&mine);
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    }
}

/// The README's first job file is `examples/first/jobs.toml`, which runs as written.
#[test]
fn the_readmes_first_job_file_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let after = readme
        .split("This is `examples/first/jobs.toml`")
        .nth(1)
        .expect("the README introduces its first job file");
    let block = after
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let file = std::fs::read_to_string(root.join("examples/first/jobs.toml")).unwrap();
    let code = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.trim_end().to_string())
            .collect()
    };
    assert_eq!(
        code(block),
        code(&file),
        "README and examples/first/jobs.toml differ"
    );
    let s = Scratch::new();
    let r = s.run_json(&[root.join("examples/first").to_str().unwrap()]);
    assert_eq!(r.code, 1, "one sample is wrong by design");
    r.assert_status("hello", "passed");
    r.assert_status("sum-0", "passed");
    r.assert_status("sum-2", "failed");
}

/// A job file may name a language by an alias of the language table, as `exec --lang` and
/// the MCP server accept them.
#[test]
fn a_language_alias_names_the_language() {
    let s = Scratch::new();
    s.write(
        "alias.yaml",
        "jobs:\n  - { name: a, lang: py, code: 'print(1)', expect: { stdout: '1' } }\n  - { name: b, lang: sh, code: 'echo 2', expect: { stdout: '2' } }\n",
    );
    let r = s.run_json(&["alias.yaml"]);
    assert_eq!(r.job("a")["lang"], "python");
    r.assert_status("a", "passed");
    r.assert_status("b", "passed");
}

/// A program killed by a signal that running out of memory also gives (SIGSEGV, SIGABRT,
/// SIGBUS, SIGKILL) is told the memory limit may be the cause.
#[test]
fn a_signal_death_names_the_memory_limit() {
    let s = Scratch::new();
    s.write(
        "sig.yaml",
        "jobs:\n  - { name: segv, lang: bash, limits: { memory: 64MiB }, code: 'kill -SEGV $$' }\n",
    );
    let r = s.run_json(&["sig.yaml"]);
    let j = r.assert_status("segv", "failed");
    let m = j["message"].as_str().unwrap();
    assert!(
        m.contains("signal 11 (SIGSEGV)")
            && m.contains("the memory limit (64MiB) may be the cause"),
        "{m}"
    );
}

/// `--retries N`: a job that fails and then passes is `passed` and `flaky`, with its
/// attempts; one that keeps failing runs N + 1 times and stays failed; the summary counts
/// the flaky ones (README, "Command line").
#[test]
fn retries_report_flaky_jobs_and_attempts() {
    common::use_binary_as_helper();
    let (_s, r) = common::run_yaml(
        r#"
jobs:
  - name: second-time-lucky
    lang: bash
    code: '[ "$LLM_SANDBOX_ATTEMPT" -ge 2 ] && echo ok || { echo "attempt $LLM_SANDBOX_ATTEMPT"; exit 1; }'
    expect: { stdout: ok }
  - name: always-wrong
    lang: bash
    code: echo "attempt $LLM_SANDBOX_ATTEMPT"; exit 3
  - name: fine
    lang: bash
    code: echo fine
"#,
        &["--retries", "2"],
    );
    let jobs = r.jobs();
    let lucky = &jobs["second-time-lucky"];
    assert_eq!(common::status(lucky), "passed", "{lucky}");
    assert_eq!(
        (lucky["flaky"].as_bool(), lucky["attempts"].as_u64()),
        (Some(true), Some(2))
    );
    let wrong = &jobs["always-wrong"];
    assert_eq!(common::status(wrong), "failed");
    assert_eq!(
        (wrong["flaky"].as_bool(), wrong["attempts"].as_u64()),
        (None, Some(3))
    );
    assert_eq!(common::field(wrong, "stdout"), "attempt 3\n");
    let fine = &jobs["fine"];
    assert!(
        fine.get("attempts").is_none() && fine.get("flaky").is_none(),
        "{fine}"
    );
    assert_eq!(r.report["summary"]["flaky"], 1);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("(1 flaky)"), "{}", r.stderr);
}

/// Under `GITHUB_ACTIONS=true`, a job that does not pass is also a workflow annotation on
/// its job file's line; elsewhere there is none.
#[test]
fn github_actions_annotations_name_the_file_and_line() {
    common::use_binary_as_helper();
    let s = common::Scratch::new();
    s.write(
        "gh.toml",
        "[[jobs]]\nname = \"ok\"\nlang = \"bash\"\ncode = \"echo ok\"\n\n[[jobs]]\nname = \"bad\"\nlang = \"bash\"\ncode = \"echo 1\"\nexpect.stdout = \"2\"\n",
    );
    let run = |github: bool| {
        let mut c = s.cmd();
        c.env_remove("GITHUB_ACTIONS");
        if github {
            c.env("GITHUB_ACTIONS", "true");
        }
        common::run_report(c.args(["run", "--json", "-", "--no-progress", "gh.toml"]))
    };
    let r = run(true);
    assert!(
        r.stderr
            .contains("::error file=gh.toml,line=7,title=bad (failed)::stdout differs at line 1"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("::error").count(), 1, "{}", r.stderr);
    assert_eq!(r.jobs()["bad"]["line"], 7);
    assert!(!run(false).stderr.contains("::error"));
}

/// `run --shard I/N` on N "machines", then `merge`: every job exactly once, and the summary
/// and pass@k of the unsharded run; reports of another job set, or one shard twice, are
/// refused (exit 2).
#[test]
fn shards_merge_into_the_unsharded_report() {
    common::use_binary_as_helper();
    let s = common::Scratch::new();
    let rows: String = (0..12)
        .map(|i| {
            format!(
                "{{\"i\": {i}, \"task\": \"t{}\", \"ok\": {}}}\n",
                i % 4,
                i % 3 != 0
            )
        })
        .collect();
    s.write("rows.jsonl", &rows);
    s.write(
        "jobs.toml",
        "[[jobs]]\nname = \"s-{{ row.i }}\"\nlang = \"bash\"\ndataset = \"rows.jsonl\"\ngroup = \"{{ row.task }}\"\ntemplate = \"{% if row.ok %}echo yes{% else %}echo no{% endif %}\"\nexpect.stdout = \"yes\"\n",
    );
    let whole = s.run_json(&["--pass-at", "1,2", "jobs.toml"]);
    for i in 1..=3 {
        let out = s
            .cmd()
            .args(["run", "--no-progress", "--pass-at", "1,2", "--shard"])
            .arg(format!("{i}/3"))
            .args(["--json", &format!("shard{i}.json"), "jobs.toml"])
            .output()
            .unwrap();
        assert!(out.status.code().is_some(), "shard {i}");
    }
    let merged = common::run_report(s.cmd().args([
        "merge",
        "shard1.json",
        "shard2.json",
        "shard3.json",
        "--json",
        "-",
    ]));
    assert_eq!(merged.code, 1, "some jobs fail: {}", merged.stderr);
    let names = |r: &common::Run| {
        let mut v: Vec<String> = r.jobs().keys().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(names(&merged), names(&whole));
    assert_eq!(merged.report["summary"], whole.report["summary"]);
    assert_eq!(merged.report["pass_at"], whole.report["pass_at"]);
    assert_eq!(merged.report["groups"], whole.report["groups"]);
    assert_eq!(merged.report["job_set"], whole.report["job_set"]);

    // One shard twice.
    let out = s
        .cmd()
        .args(["merge", "shard1.json", "shard1.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is in both shard1.json and shard1.json"),
        "{err}"
    );
    // Another job set.
    let other = s.run_json(&["--filter", "s-1*", "jobs.toml"]);
    std::fs::write(s.path().join("other.json"), other.report.to_string()).unwrap();
    let out = s
        .cmd()
        .args(["merge", "shard1.json", "other.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("different job sets"), "{err}");
    // Not a report.
    s.write("junk.json", "{\"hello\": 1}");
    let out = s.cmd().args(["merge", "junk.json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("junk.json: not an llm-sandbox JSON report")
    );
}

/// `--rerun-failed`: only the jobs that did not pass in the last run (or in a given
/// report); nothing to rerun is a success.
#[test]
fn rerun_failed_runs_only_what_did_not_pass() {
    common::use_binary_as_helper();
    let s = common::Scratch::new();
    s.write(
        "jobs.toml",
        "[[jobs]]\nname = \"good\"\nlang = \"bash\"\ncode = \"echo ok\"\n\n[[jobs]]\nname = \"bad\"\nlang = \"bash\"\ncode = \"exit 1\"\n\n[[jobs]]\nname = \"slow\"\nlang = \"bash\"\ncode = \"sleep 5\"\ntimeout = \"200ms\"\n",
    );
    let first = s.run_json(&["jobs.toml"]);
    assert_eq!(first.jobs().len(), 3);
    let again = s.run_json(&["--rerun-failed", "jobs.toml"]);
    let mut names: Vec<String> = again.jobs().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["bad", "slow"], "{}", again.stderr);
    assert!(
        again.stderr.contains("2 of the 2 jobs that did not pass"),
        "{}",
        again.stderr
    );
    // From a given report.
    std::fs::write(s.path().join("first.json"), first.report.to_string()).unwrap();
    let given = s.run_json(&[
        "--rerun-failed=first.json",
        "--filter",
        "!slow",
        "jobs.toml",
    ]);
    assert_eq!(given.jobs().keys().collect::<Vec<_>>(), ["bad"]);
    // Nothing failed: nothing runs, success.
    s.write(
        "jobs.toml",
        "[[jobs]]\nname = \"good\"\nlang = \"bash\"\ncode = \"echo ok\"\n",
    );
    let _ = s.run_json(&["jobs.toml"]);
    let out = s
        .cmd()
        .args(["run", "--no-progress", "--rerun-failed", "jobs.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to rerun"));
}

/// `--resume` after the runner was killed (SIGKILL): the jobs that finished are not run
/// again and are in the reports with their results; the one that was running runs; a job
/// changed since is said and runs again; without a journal, everything runs.
#[test]
fn resume_after_a_killed_run() {
    common::use_binary_as_helper();
    let s = common::Scratch::new();
    let jobs = |first: &str| {
        format!(
            "[[jobs]]\nname = \"quick-1\"\nlang = \"bash\"\ncode = \"{first}\"\n\n[[jobs]]\nname = \"quick-2\"\nlang = \"bash\"\ncode = \"echo two\"\n\n[[jobs]]\nname = \"quick-3\"\nlang = \"bash\"\ncode = \"echo three\"\n\n[[jobs]]\nname = \"slow\"\nlang = \"bash\"\ncode = \"sleep 3; echo slow\"\n"
        )
    };
    s.write("jobs.toml", &jobs("echo one"));
    let none = s.run_json(&["--resume", "-j", "1", "jobs.toml"]);
    assert!(
        none.stderr.contains("--resume: no journal of this job set")
            && none.stderr.contains("running every job"),
        "{}",
        none.stderr
    );
    assert_eq!(none.jobs().len(), 4);
    // A fresh run, killed while `slow` runs (the three quick ones are in the journal).
    let journal_dir = s.path().join(".llm-sandbox/journal");
    let _ = std::fs::remove_dir_all(&journal_dir);
    let mut child = s
        .cmd()
        .args(["run", "--no-progress", "-j", "1", "jobs.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = || -> usize {
        std::fs::read_dir(&journal_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while lines() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lines(), 3, "the quick jobs' results are in the journal");
    child.kill().unwrap();
    child.wait().unwrap();

    let r = s.run_json(&["--resume", "-j", "1", "jobs.toml"]);
    assert!(
        r.stderr.contains("--resume: 3 of 4 jobs have a result"),
        "{}",
        r.stderr
    );
    assert_eq!(r.jobs().len(), 4, "every job is in the report");
    assert!(
        r.stderr.contains("4 jobs run: 4 passed"),
        "the summary counts them too: {}",
        r.stderr
    );
    assert!(r.jobs().values().all(|j| common::status(j) == "passed"));
    assert_eq!(common::field(&r.jobs()["quick-2"], "stdout"), "two\n");
    assert_eq!(common::field(&r.jobs()["slow"], "stdout"), "slow\n");

    // Nothing left: resuming again runs nothing; a changed job is said and runs.
    s.write("jobs.toml", &jobs("echo ONE"));
    let r = s.run_json(&["--resume", "jobs.toml"]);
    assert!(
        r.stderr.contains("--resume: 3 of 4 jobs have a result"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("changed since: quick-1"), "{}", r.stderr);
    assert_eq!(common::field(&r.jobs()["quick-1"], "stdout"), "ONE\n");
    assert_eq!(r.jobs().len(), 4);
}

/// A program that cannot start (here: a `rootfs` without bash) is its job's `error`, saying
/// why: the step's process reports its failed execve to the init before it exits (it shares
/// the init's memory until then: src/sandbox/init.rs, `run_step`).
#[test]
fn a_program_that_cannot_start_is_an_error_saying_why() {
    let dir = Scratch::new();
    std::fs::create_dir_all(dir.path().join("emptyroot")).unwrap();
    dir.write(
        "f.toml",
        "[backends.native]\nrootfs = \"emptyroot\"\n\n[[jobs]]\nname = \"no-program\"\nlang = \"bash\"\ncode = \"echo hi\"\n",
    );
    let r = common::run_report(
        dir.cmd()
            .args(["run", "--no-progress", "--backend", "native"])
            .args(["--json", "-", "f.toml"]),
    );
    let j = &r.jobs()["no-program"];
    assert_eq!(common::status(j), "error", "{j}");
    let message = common::field(j, "message");
    assert!(
        message.contains("cannot execute") && message.contains("No such file"),
        "{message}"
    );
}

/// Two runs of one job set at once in one folder (the same job names; `--var` gives each
/// its own output): each reports its own results. The journal is the first run's; the
/// second says it cannot write it and keeps its results aside (it cannot be resumed).
#[test]
fn two_runs_of_one_job_set_at_once_keep_their_own_results() {
    let s = common::Scratch::new();
    s.write(
        "jobs.toml",
        "[vars]\ntag = \"none\"\n\n[[jobs]]\nname = \"first\"\nlang = \"bash\"\ntemplate = \"echo {{ tag }}\"\n\n[[jobs]]\nname = \"second\"\nlang = \"bash\"\ntemplate = \"sleep 2; echo {{ tag }}\"\n",
    );
    let first = s
        .cmd()
        .args([
            "run",
            "--no-progress",
            "-j",
            "1",
            "--var",
            "tag=A",
            "--json",
            "a.json",
            "jobs.toml",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once `first` is in A's journal, B runs the same job set to its end meanwhile.
    let journal_dir = s.path().join(".llm-sandbox/journal");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && std::fs::read_dir(&journal_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .is_none_or(|t| t.lines().count() != 1)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let b = s.run_json(&["-j", "1", "--var", "tag=B", "jobs.toml"]);
    assert!(
        b.stderr
            .contains("another run of this job set in this folder is writing it"),
        "{}",
        b.stderr
    );
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path().join("a.json")).unwrap()).unwrap();
    for (report, tag) in [(&a, "A"), (&b.report, "B")] {
        let said: Vec<&str> = report["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["stdout"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(said, [format!("{tag}\n"), format!("{tag}\n")], "{report:#}");
    }
}
