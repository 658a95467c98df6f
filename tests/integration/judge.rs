//! Judge-style evaluation (README, "Test cases"): cases from a dataset row, one JUnit
//! `<testcase>` per case, the terminal's `k/n cases`, and pass@k counting a sample as
//! correct only when every case passes. Every backend runs cases through the same code
//! (`tests/integration/conformance.rs` has them on each).

use crate::common;

use common::{field, status, Scratch};

/// A CodeContests-style dataset: one row per sample, its tests in the row. `wrong` gets the
/// second case wrong, `right` passes all; both of one problem, one group.
const ROWS: &str = r#"{"id": "right", "code": "a, b = map(int, input().split())\nprint(a + b)", "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "40 2\n", "output": "42\n"}]}
{"id": "wrong", "code": "a, b = map(int, input().split())\nprint(a + b if a < 10 else 0)", "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "40 2\n", "output": "42\n"}]}
"#;

const JOBS: &str = r#"
[[jobs]]
name = "sum-{{ row.id }}"
lang = "python"
dataset = "rows.jsonl"
template = "{{ row.code }}"
group = "sum"
cases = "{{ row.tests | tojson }}"
cases_stop = "never"
"#;

#[test]
fn dataset_cases_junit_terminal_and_pass_at_k() {
    common::use_binary_as_helper();
    let s = Scratch::new();
    s.write("rows.jsonl", ROWS);
    s.write("jobs.toml", JOBS);
    let r = s.run_json(&["--backend", "native", "--junit", "junit.xml", "jobs.toml"]);
    assert_eq!(r.code, 1, "one sample fails: {}", r.stderr);
    let jobs = r.jobs();
    let right = &jobs["sum-right"];
    let wrong = &jobs["sum-wrong"];
    assert_eq!(status(right), "passed", "{right}");
    assert_eq!(
        (
            right["cases_total"].as_u64(),
            right["cases_passed"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(status(wrong), "failed", "{wrong}");
    assert_eq!(
        (
            wrong["cases_total"].as_u64(),
            wrong["cases_passed"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let names: Vec<&str> = wrong["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["case-1", "case-2"]);
    assert_eq!(status(&wrong["cases"][1]), "failed");
    assert!(
        wrong["message"]
            .as_str()
            .unwrap()
            .starts_with("case case-2:"),
        "{}",
        wrong["message"]
    );
    // pass@1 over the group: one of the two samples passes every case.
    assert_eq!(r.report["pass_at"]["1"].as_f64(), Some(0.5), "{}", r.report);
    assert_eq!(r.report["groups"][0]["passed"], 1, "{}", r.report["groups"]);

    // JUnit: one testcase per case, `job/case`.
    let xml = std::fs::read_to_string(s.path().join("junit.xml")).unwrap();
    for case in [
        "sum-right/case-1",
        "sum-right/case-2",
        "sum-wrong/case-1",
        "sum-wrong/case-2",
    ] {
        assert!(xml.contains(&format!("name=\"{case}\"")), "{case} in {xml}");
    }
    assert!(
        xml.contains("tests=\"4\"") && xml.contains("failures=\"1\""),
        "{xml}"
    );

    // The terminal: one line per job with its cases.
    assert!(r.stderr.contains("sum-wrong (1/2 cases)"), "{}", r.stderr);
    assert!(
        r.stderr.contains("-42") && r.stderr.contains("+0"),
        "the failing case's diff: {}",
        r.stderr
    );
}

/// A program that cannot be compiled: no case runs, the job says why.
#[test]
fn a_compile_error_runs_no_case() {
    common::use_binary_as_helper();
    let s = Scratch::new();
    s.write("t/1.in", "1\n");
    s.write("t/1.out", "1\n");
    s.write(
        "jobs.toml",
        "[[jobs]]\nname = \"broken\"\nlang = \"c\"\ncode = \"int main( {\"\ncases = \"t/*.in\"\n",
    );
    let r = s.run_json(&["--backend", "native", "jobs.toml"]);
    let j = &r.jobs()["broken"];
    assert_eq!(status(j), "failed", "{j}");
    assert_eq!(j["phase"], "compile", "{j}");
    assert_eq!(
        (j["cases_total"].as_u64(), j["cases_passed"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(j["cases"].as_array().is_none_or(|c| c.is_empty()), "{j}");
}

/// `limits.cpu_time` bounds the program of each case, not the build made once before them
/// (a slow `javac` took more than a second of CPU here, and every case of a correct Java
/// program was a timeout). The build is a `setup` command burning 1.3 s of CPU; each case's
/// program, 1 s at most.
#[test]
fn the_cpu_time_limit_is_the_programs_not_the_builds() {
    common::use_binary_as_helper();
    let s = Scratch::new();
    s.write(
        "jobs.toml",
        r#"
[[jobs]]
name = "built-slowly"
lang = "bash"
setup = ["python3 -c 'import time\nwhile time.process_time() < 1.3: pass'"]
code = "read a b; echo $((a + b))"
limits.cpu_time = "1s"
cases = [{ stdin = "1 2", expect.stdout = "3" }, { stdin = "40 2", expect.stdout = "42" }]
[[jobs]]
name = "slow-program"
lang = "python"
setup = ["true"]
code = "import time\nwhile time.process_time() < 1.3: pass\nprint(3)"
limits.cpu_time = "1s"
cases = [{ stdin = "1 2", expect.stdout = "3" }]
"#,
    );
    let r = s.run_json(&["--backend", "native", "jobs.toml"]);
    let jobs = r.jobs();
    let built = &jobs["built-slowly"];
    assert_eq!(status(built), "passed", "{built}");
    assert_eq!(built["cases_passed"].as_u64(), Some(2), "{built}");
    let slow = &jobs["slow-program"];
    assert_eq!(status(slow), "timeout", "{slow}");
    assert!(
        field(slow, "message").contains("CPU time limit exceeded"),
        "{slow}"
    );
}

/// examples/judge: every verdict of its README's table, on native.
#[test]
fn the_example_judge_gives_the_verdicts_of_its_readme() {
    common::use_binary_as_helper();
    const TABLE: &[(&str, &str, u64, u64)] = &[
        ("sum/accepted-cpp", "passed", 3, 3),
        ("sum/accepted-java", "passed", 3, 3),
        ("sum/accepted-python", "passed", 3, 3),
        ("sum/wrong-cpp", "failed", 2, 3),
        ("sum/slow-cpp", "timeout", 2, 3),
        ("sum/memory-cpp", "failed", 2, 3),
        ("sum/compile-error-cpp", "failed", 0, 3),
        ("sum/runtime-error-python", "failed", 2, 3),
        ("circle/accepted-python", "passed", 2, 2),
        ("circle/rough-python", "failed", 0, 2),
        ("pair/accepted-python", "passed", 2, 2),
        ("pair/wrong-python", "failed", 0, 2),
        ("guess/accepted-cpp", "passed", 3, 3),
        ("guess/accepted-python", "passed", 3, 3),
        ("guess/linear-python", "failed", 1, 3),
        ("guess/no-flush-cpp", "timeout", 0, 3),
    ];
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/judge/judge.toml");
    let s = Scratch::new();
    let r = s.run_json(&["--backend", "native", example.to_str().unwrap()]);
    let jobs = r.jobs();
    let readme = std::fs::read_to_string(example.with_file_name("README.md")).unwrap();
    let java = common::have("javac");
    let mut wrong = vec![];
    for (name, want, passed, total) in TABLE {
        assert!(
            readme.contains(&format!("| `{name}` | {want} | {passed}/{total} |")),
            "the README's table lacks {name} {want} {passed}/{total}"
        );
        if name.contains("java") && !java {
            common::skipped(format!("examples/judge {name}: javac is not installed"));
            continue;
        }
        let j = &jobs[*name];
        let got = (
            status(j),
            j["cases_passed"].as_u64(),
            j["cases_total"].as_u64(),
        );
        if got != (*want, Some(*passed), Some(*total)) {
            wrong.push(format!(
                "{name}: {got:?}, want {want} {passed}/{total}: {}",
                j["message"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let memory = &jobs["sum/memory-cpp"]["message"];
    assert!(
        memory.as_str().unwrap_or("").contains("memory limit"),
        "{memory}"
    );
    let linear = &jobs["guess/linear-python"]["message"];
    assert_eq!(
        linear, "case 02: wrong answer (interactor): more than 31 lines",
        "{linear}"
    );
    let no_flush = field(&jobs["guess/no-flush-cpp"], "message");
    assert!(
        no_flush.contains("must flush its output after each line"),
        "{no_flush}"
    );
}

/// An interactor's verdicts beyond accepted and wrong answer, on native: it gets the
/// case's expected output as its ANSWER file when there is one; a program that ends with
/// an error fails even when the interactor accepts; an interactor that exits otherwise
/// (3: testlib's "fail") is an error of the interactor, not a verdict on the program; and
/// a program killed by a signal keeps that verdict whatever the interactor then says.
#[test]
fn an_interactor_gets_the_answer_and_its_failures_are_errors() {
    common::use_binary_as_helper();
    let s = Scratch::new();
    s.write(
        "jobs.toml",
        r#"
[defaults]
lang = "python"
timeout = "10s"
cases = [{ name = "one", stdin = "4", expect.stdout = "16" }]
# Sends the input, expects its square, which the answer file holds.
interactor = { lang = "python", code = """
import sys
n, want = open(sys.argv[1]).read().strip(), open(sys.argv[3]).read().strip()
if n == "fail":
    sys.exit(print("broken test", file=sys.stderr) or 3)
print(n, flush=True)
got = sys.stdin.readline().strip()
if got != want:
    sys.exit(print(f"{got} is not {want}", file=sys.stderr) or 1)
print("square ok", file=sys.stderr)
""" }

[[jobs]]
name = "square"
code = "n = int(input()); print(n * n, flush=True)"

[[jobs]]
name = "square-then-exit-3"
code = "import sys; n = int(input()); print(n * n, flush=True); sys.exit(3)"

[[jobs]]
name = "square-then-killed"
code = "import os, signal; n = int(input()); print(n + 1, flush=True); os.kill(os.getpid(), signal.SIGKILL)"

[[jobs]]
name = "broken-test"
code = "print(input())"
cases = [{ name = "two", stdin = "fail", expect.stdout = "x" }]
"#,
    );
    let r = s.run_json(&["--backend", "native", "jobs.toml"]);
    let jobs = r.jobs();
    let square = &jobs["square"];
    assert_eq!(status(square), "passed", "{square}");
    let said = &square["cases"][0]["checks"];
    assert!(
        said.to_string()
            .contains("the interactor accepted: square ok"),
        "{said}"
    );
    let exit3 = &jobs["square-then-exit-3"];
    assert_eq!(status(exit3), "failed", "{exit3}");
    assert_eq!(exit3["exit_code"], 3, "{exit3}");
    let killed = &jobs["square-then-killed"];
    assert_eq!(status(killed), "failed", "{killed}");
    assert!(
        field(killed, "message").contains("SIGKILL"),
        "a killed program keeps its own verdict, not the interactor's wrong answer: {killed}"
    );
    let broken = &jobs["broken-test"];
    assert_eq!(status(broken), "error", "{broken}");
    assert_eq!(
        broken["message"], "case two: the interactor failed (exit code 3): broken test",
        "{broken}"
    );
}

/// An interactive job holds two of its backend's slots while it runs (its program and its
/// interactor run at once): with `-j 2` the job after it starts only once it has finished,
/// where a job of one sandbox leaves the second slot to the next job.
#[test]
fn an_interactive_job_holds_two_slots() {
    common::use_binary_as_helper();
    let s = Scratch::new();
    let jobs = |interactor: &str| {
        format!(
            r#"
[[jobs]]
name = "slow"
lang = "python"
timeout = "20s"
cases = [{{ name = "one", stdin = "4", expect.stdout = "16" }}]
{interactor}
code = "import time; time.sleep(1.5); n = int(input()); print(n * n, flush=True)"

[[jobs]]
name = "quick"
lang = "bash"
code = "true"
"#
        )
    };
    let interactor = r#"interactor = { lang = "python", code = """
import sys
print(open(sys.argv[1]).read().strip(), flush=True)
sys.exit(0 if sys.stdin.readline().strip() == "16" else 1)
""" }"#;
    // The order of the terminal's result lines: the order the jobs ended in.
    let ended = |r: &common::Run| -> Vec<String> {
        r.stderr
            .lines()
            .filter(|l| l.contains("PASS"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| *w == "slow" || *w == "quick")
                    .map(str::to_string)
            })
            .collect()
    };
    s.write("interactive.toml", &jobs(interactor));
    let r = s.run_json(&["--backend", "native", "-j", "2", "interactive.toml"]);
    assert_eq!(r.code, 0, "{}\n{}", r.pretty(), r.stderr);
    assert_eq!(ended(&r), ["slow", "quick"], "{}", r.stderr);
    // The same jobs without the interactor: the quick job takes the free slot at once.
    s.write("plain.toml", &jobs(""));
    let r = s.run_json(&["--backend", "native", "-j", "2", "plain.toml"]);
    assert_eq!(r.code, 0, "{}\n{}", r.pretty(), r.stderr);
    assert_eq!(ended(&r), ["quick", "slow"], "{}", r.stderr);
}

/// Runs the programs `right` (prints 16), `wrong` (15) and each of `more` (name, what it
/// prints) on one case whose answer is 16, judged by `checker` (language, code) that says
/// "OUT is not ANS" and exits 1 on a wrong answer; asserts that `right` passes and `wrong`
/// is a wrong answer, with those words. The reports, by name.
fn judged_by(
    lang: &str,
    checker: &str,
    more: &[(&str, &str)],
) -> std::collections::HashMap<String, serde_json::Value> {
    common::use_binary_as_helper();
    let s = Scratch::new();
    let mut jobs = format!(
        r#"
[defaults]
lang = "python"
timeout = "10s"
cases = [{{ name = "one", stdin = "4", expect.stdout = "16" }}]
checker = {{ lang = "{lang}", code = """{checker}""" }}
"#
    );
    for (name, prints) in [("right", "16"), ("wrong", "15")].iter().chain(more) {
        jobs += &format!("\n[[jobs]]\nname = \"{name}\"\ncode = \"print('{prints}')\"\n");
    }
    s.write("jobs.toml", &jobs);
    let r = s.run_json(&["--backend", "native", "jobs.toml"]);
    let reports = r.jobs();
    assert_eq!(status(&reports["right"]), "passed", "{}", reports["right"]);
    let wrong = &reports["wrong"];
    assert_eq!(status(wrong), "failed", "{wrong}");
    assert!(
        field(wrong, "message").contains("wrong answer: 15 is not 16"),
        "{wrong}"
    );
    reports
}

/// A Python checker that crashes (an uncaught exception, which exits 1 in Python) makes
/// the case an `error`, "the checker failed", not a wrong answer; its own `sys.exit(1)` still
/// is one, and it runs as `__main__` with its arguments as when run directly.
#[test]
fn a_python_checker_that_crashes_is_an_error_not_a_wrong_answer() {
    let checker = r#"
import sys

def main():
    inp, out, ans = (open(p).read().strip() for p in sys.argv[1:4])
    if out == "crash":
        raise ValueError("the checker's own bug")
    if out != ans:
        sys.exit(print(f"{out} is not {ans}", file=sys.stderr) or 1)

if __name__ == "__main__":
    main()
"#;
    let jobs = judged_by("python", checker, &[("crashes-the-checker", "crash")]);
    let crashed = &jobs["crashes-the-checker"];
    assert_eq!(status(crashed), "error", "{crashed}");
    let message = field(crashed, "message");
    assert!(
        message.contains("the checker failed (exit code 3)")
            && message.contains("ValueError: the checker's own bug")
            && message.contains("/sandbox/judged.py"),
        "{crashed}"
    );
    assert!(
        !message.contains("runpy"),
        "the traceback starts at the checker's own code: {message}"
    );
}

/// The same for a JavaScript checker (whose uncaught errors exit 1 too): a crash or an
/// unhandled rejection is an `error`, its own `process.exit(1)` a wrong answer, and it is
/// still the main module.
#[test]
fn a_javascript_checker_that_crashes_is_an_error_not_a_wrong_answer() {
    if !common::have("node") {
        return common::skipped("node is not installed");
    }
    let checker = r#"
const fs = require("fs");
function main() {
  const [inp, out, ans] = process.argv.slice(2, 5).map((p) => fs.readFileSync(p, "utf8").trim());
  if (out === "crash") throw new Error("the checker's own bug");
  if (out === "reject") return Promise.reject(new Error("an unhandled rejection"));
  if (out !== ans) {
    console.error(`${out} is not ${ans}`);
    process.exit(1);
  }
}
if (require.main === module) main();
"#;
    let jobs = judged_by(
        "javascript",
        checker,
        &[
            ("crashes-the-checker", "crash"),
            ("rejects-in-the-checker", "reject"),
        ],
    );
    for (name, said) in [
        ("crashes-the-checker", "Error: the checker's own bug"),
        ("rejects-in-the-checker", "Error: an unhandled rejection"),
    ] {
        let crashed = &jobs[name];
        assert_eq!(status(crashed), "error", "{crashed}");
        let message = field(crashed, "message");
        assert!(
            message.contains("the checker failed (exit code 3)") && message.contains(said),
            "{crashed}"
        );
    }
}
