//! CLI-level bad input: exit code 2, reported before anything runs, with the file name and
//! line:column of the problem. (Deeper spec-error tests live in tests/integration/spec_errors.rs.)
//! Also: `validate` accepts the shipped jobs/ and `plan --format json` lists the jobs.

use crate::common;

use common::bin;
use serde_json::Value;
use std::path::Path;
use tempfile::TempDir;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Writes `content` to `dir/name`, runs `run <name> --json - <extra>` there, expects exit
/// code 2 and an empty stdout (nothing ran, no report), returns stderr.
fn bad_input(name: &str, content: &str, extra: &[&str]) -> String {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join(name), content).unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["run", name, "--json", "-", "--no-progress"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code for {name}:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "bad input must not produce a report:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !dir.path().join(".llm-sandbox").exists(),
        "nothing may run on bad input"
    );
    stderr
}

fn assert_mentions(stderr: &str, needles: &[&str]) {
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention {n:?}:\n{stderr}");
    }
}

#[test]
fn two_reports_on_stdout_are_a_usage_error() {
    let err = bad_input(
        "ok.toml",
        "[[jobs]]\nname = \"x\"\nlang = \"bash\"\ncode = \"echo hi\"\n",
        &["--junit", "-"],
    );
    assert_mentions(&err, &["--json - and --junit -", "stdout"]);
}

#[test]
fn toml_syntax_error() {
    let err = bad_input(
        "syntax.toml",
        "[[jobs]]\nname = \"x\"\nlang = \"python\"\ncode = \"print(1)\n",
        &[],
    );
    assert_mentions(&err, &["syntax.toml:4:", "TOML"]);
}

#[test]
fn unknown_key_with_suggestion() {
    let err = bad_input(
        "unknown.toml",
        "[[jobs]]\nname = \"x\"\nlang = \"python\"\ncode = \"print(1)\"\nexpcet.stdout = \"1\"\n",
        &[],
    );
    assert_mentions(
        &err,
        &["unknown.toml:5:1", "expcet", "did you mean `expect`"],
    );
}

#[test]
fn unknown_language_in_yaml() {
    let err = bad_input(
        "lang.yaml",
        "jobs:\n  - name: x\n    lang: cobol\n    code: \"print(1)\"\n",
        &[],
    );
    assert_mentions(&err, &["lang.yaml:3:", "cobol", "python", "javascript"]);
}

#[test]
fn bad_duration() {
    let err = bad_input(
        "dur.toml",
        "[[jobs]]\nname = \"x\"\nlang = \"bash\"\ncode = \"true\"\ntimeout = \"10 parsecs\"\n",
        &[],
    );
    assert_mentions(&err, &["dur.toml:5:", "timeout", "10 parsecs", "500ms"]);
}

#[test]
fn missing_code() {
    let err = bad_input(
        "nocode.toml",
        "[[jobs]]\nname = \"x\"\nlang = \"python\"\nexpect.stdout = \"1\"\n",
        &[],
    );
    assert_mentions(&err, &["nocode.toml:", "code", "template"]);
}

#[test]
fn var_without_equals() {
    let err = bad_input(
        "ok.toml",
        "[[jobs]]\nname = \"x\"\nlang = \"bash\"\ncode = \"true\"\n",
        &["--var", "novalue"],
    );
    assert_mentions(&err, &["--var", "novalue", "KEY=VALUE"]);
}

#[test]
fn nonexistent_path() {
    let dir = TempDir::new().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["run", "does/not/exist.toml", "--json", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_mentions(&stderr, &["does/not/exist.toml", "no such file"]);
}

#[test]
fn validate_accepts_the_shipped_jobs() {
    let out = bin()
        .current_dir(ROOT)
        .args(["validate", "jobs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("valid"), "{stderr}");
    // validate runs nothing: no artifacts, and no report.
    assert!(out.stdout.is_empty());
}

#[test]
fn validate_rejects_a_broken_file_among_good_ones() {
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("a-good.toml"),
        "[[jobs]]\nname = \"good\"\nlang = \"bash\"\ncode = \"true\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-bad.yaml"),
        "jobs:\n  - name: bad\n    lang: bash\n    template: \"echo {{ nope }}\"\n",
    )
    .unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args(["validate", "."])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_mentions(&stderr, &["b-bad.yaml", "nope"]);
}

#[test]
fn plan_json_lists_the_jobs() {
    let out = bin()
        .current_dir(ROOT)
        .args(["plan", "--format", "json", "jobs"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan --format json is JSON");
    let jobs = plan["jobs"].as_array().expect("jobs[]");
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    for want in ["hello-python", "hello-java", "hello-rust", "sales-report"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // The eval dataset expands to 5 problems x 3 samples.
    let eval: Vec<&Value> = jobs
        .iter()
        .filter(|j| j["file"].as_str().unwrap().ends_with("eval.toml"))
        .collect();
    assert_eq!(eval.len(), 15);
    assert!(eval.iter().all(|j| j["group"].is_string()));
    assert_eq!(plan["total"].as_u64(), Some(jobs.len() as u64));
    // Every job file under jobs/ is listed.
    let files: Vec<&str> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files
        .iter()
        .any(|f| Path::new(f).ends_with("files/sales-report.yaml")));
    assert!(files
        .iter()
        .any(|f| Path::new(f).ends_with("hello/python.toml")));
}

#[test]
fn plan_shows_batches_and_each_backends_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mixed.toml"),
        r#"
[[jobs]]
name = "n"
lang = "bash"
code = "true"
[[jobs]]
name = "d-{{ matrix.i }}"
lang = "python"
backend = "docker"
libraries = ["six"]
matrix.i = [1, 2]
template = "print({{ matrix.i }})"
"#,
    )
    .unwrap();
    let out = bin()
        .current_dir(dir.path())
        .args([
            "plan",
            "-j",
            "2",
            "--backend-jobs",
            "docker=5",
            "mixed.toml",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_mentions(
        &text,
        &[
            "3 job(s)",
            "2 batch(es)",
            "native runs 2 at a time",
            "docker runs 5 at a time",
            "+libraries[six]",
        ],
    );
    let out = bin()
        .current_dir(dir.path())
        .args([
            "plan",
            "--format",
            "json",
            "--backend-jobs",
            "docker=5",
            "mixed.toml",
        ])
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["concurrency"]["docker"], 5);
    assert_eq!(plan["batches"].as_array().unwrap().len(), 2);
    // A bad value is a usage error naming what is valid.
    let out = bin()
        .current_dir(dir.path())
        .args(["run", "--backend-jobs", "dockr=2", "mixed.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_mentions(
        &String::from_utf8_lossy(&out.stderr),
        &["dockr", "native, docker, podman, kubernetes"],
    );
}

/// `completions SHELL` prints a completion script that knows the subcommands and options.
#[test]
fn shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["run", "watch", "exec", "fail-fast", "junit"] {
            assert!(script.contains(word), "{shell}: no {word} in\n{script}");
        }
    }
    let out = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `doctor`: a backend that is not set up here (an engine not reachable, a cluster not
/// configured) is "not available" (`--`) alike; FAIL is for the native backend only.
#[test]
fn doctor_says_not_available_alike() {
    let out = bin()
        .arg("doctor")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for backend in ["docker", "kubernetes"] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(backend))
            .unwrap_or_else(|| panic!("no {backend} line:\n{text}"));
        assert!(line.trim_start().starts_with("--"), "{line}");
    }
}

#[test]
fn a_selection_with_no_job_is_an_error_naming_the_filters() {
    let jobs =
        "[[jobs]]\nname = \"add-1\"\nlang = \"bash\"\ncode = \"echo 1\"\ntags = [\"fast\"]\n";
    let err = bad_input("sel.toml", jobs, &["--filter", "mul-*"]);
    assert_mentions(
        &err,
        &[
            "no job matches the filters `mul-*`",
            "1 jobs in the files",
            "!GLOB",
        ],
    );
    let err = bad_input("sel.toml", jobs, &["--filter", "!tag:fast"]);
    assert_mentions(&err, &["no job matches the filters `!tag:fast`"]);
}

#[test]
fn bad_shards_are_usage_errors() {
    let jobs = "[[jobs]]\nname = \"x\"\nlang = \"bash\"\ncode = \"echo 1\"\n";
    for bad in ["0/3", "4/3", "x/y", "3", "1/0"] {
        let err = bad_input("shard.toml", jobs, &["--shard", bad]);
        assert_mentions(&err, &[&format!("invalid shard `{bad}`"), "1 <= I <= N"]);
    }
}
