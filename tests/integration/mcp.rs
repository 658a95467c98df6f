//! `llm-sandbox mcp` driven by the official MCP Python client (PyPI `mcp`, in the venv
//! `target/mcp-venv` that scripts/test creates): tests/mcp/client_test.py spawns the
//! server, initialises, lists the tools and runs code (several languages, a failure, a
//! timeout, /etc/shadow, an unknown language, output limits, matplotlib plots).

use crate::common;

use std::path::PathBuf;
use std::process::Command;

/// The venv's python when it has the `mcp` package (see [`common::venv_python`]).
fn client_python() -> Option<PathBuf> {
    common::venv_python(
        "LLM_SANDBOX_MCP_PYTHON",
        "mcp-venv",
        "mcp",
        "the MCP Python client",
        "tests/mcp/requirements.txt",
    )
}

fn run_client(backend: &str) {
    let Some(py) = client_python() else { return };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client_test.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .arg(env!("CARGO_BIN_EXE_llm-sandbox"))
        .args(["--backend", backend]);
    // Under CI the host has matplotlib (scripts/test installs python3-matplotlib).
    if common::strict().is_some() {
        cmd.arg("--require-plots");
    }
    let out = cmd.output().expect("run the MCP client test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "the MCP client test failed on {backend}:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn mcp_client_on_native() {
    run_client("native");
}

#[test]
fn mcp_client_on_docker() {
    if !common::backend_selected("docker") {
        if let Some(strict) = common::strict() {
            panic!("docker is not available ({strict} requires it)");
        }
        common::skipped("docker is not available for the MCP test on docker");
        return;
    }
    run_client("docker");
}

/// Bad server settings stop it before it speaks MCP, with the flag named.
#[test]
fn bad_settings_are_refused() {
    let out = common::bin().args(["mcp", "--cpus=0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = common::bin()
        .args(["mcp", "--timeout", "5m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-timeout"), "{err}");
    let out = common::bin()
        .args(["mcp", "--backend", "vm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("valid: native, docker"), "{err}");
}
