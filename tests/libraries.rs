//! `libraries` on the native backend: installed once per set in a prepare sandbox (network
//! on, the machine's package-manager configuration), then read-only in the job's sandbox.
//! Needs PyPI and the npm registry (reachable on this project's machines).

use serde_json::Value;
use std::process::Command;

#[test]
fn python_and_javascript_libraries_are_installed_once_and_visible() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("libs.toml");
    std::fs::write(
        &f,
        r#"
[[jobs]]
name = "six"
lang = "python"
libraries = ["six==1.16.0"]
code = "import six, sys; print(six.__version__); print(six.__file__)"
expect.stdout_contains = ["1.16.0", "/.llm-sandbox/libs/"]

[[jobs]]
name = "six-again"
lang = "python"
libraries = ["six==1.16.0"]
code = "import six; open(six.__file__, 'a')"
expect.exit_code = 1
expect.stderr_contains = "Read-only file system"

[[jobs]]
name = "is-number"
lang = "javascript"
libraries = ["is-number@7.0.0"]
code = "console.log(require('is-number')(5))"
expect.stdout = "true"

[[jobs]]
name = "missing"
lang = "python"
libraries = ["llm-sandbox-no-such-package-xyz"]
code = "print(1)"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llm-sandbox"))
        .args(["run", "--no-progress", "--json", "-"])
        .arg(&f)
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let get = |n: &str| {
        r["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == n)
            .unwrap()
            .clone()
    };
    for n in ["six", "six-again", "is-number"] {
        let j = get(n);
        assert_eq!(
            j["status"],
            "passed",
            "{n}: {}",
            serde_json::to_string_pretty(&j).unwrap()
        );
    }
    let j = get("missing");
    assert_eq!(j["status"], "error");
    assert_eq!(j["phase"], "prepare");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .contains("installing the libraries"),
        "{j}"
    );
    assert!(
        j["stderr"]
            .as_str()
            .unwrap()
            .contains("llm-sandbox-no-such-package-xyz"),
        "{j}"
    );
    assert_eq!(out.status.code(), Some(1));
}
