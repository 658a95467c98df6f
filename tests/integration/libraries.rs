//! `libraries` on the native backend: installed once per set in a prepare sandbox (network
//! on, the machine's package-manager configuration), then read-only in the job's sandbox.
//! Needs PyPI and the npm registry (reachable on this project's machines).

use crate::common;

use common::Scratch;

/// Whether the package index answers (PIP_INDEX_URL's host, else PyPI's): a skip notice
/// when it does not, a failure under CI=true.
fn package_index_reachable() -> bool {
    use std::net::ToSocketAddrs;
    let url = std::env::var("PIP_INDEX_URL").unwrap_or_else(|_| "https://pypi.org/simple".into());
    let rest = url.split("://").nth(1).unwrap_or(&url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let target = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!(
            "{host_port}:{}",
            if url.starts_with("http://") { 80 } else { 443 }
        )
    };
    let ok = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)).is_ok()
        });
    if !ok {
        if let Some(flag) = common::strict() {
            panic!("the package index {url} is not reachable ({flag} requires the libraries test)");
        }
        common::skipped(format!(
            "libraries test: the package index {url} is not reachable (offline?)"
        ));
    }
    ok
}

#[test]
fn python_and_javascript_libraries_are_installed_once_and_visible() {
    if !package_index_reachable() {
        return;
    }
    let s = Scratch::new();
    s.write(
        "libs.toml",
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
    );
    let r = s.run_json(&["libs.toml"]);
    let get = |n: &str| r.job(n).clone();
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
    assert_eq!(r.code, 1);
}
