//! A Python session on Docker: run code, run code that needs a library, run a shell
//! command, close. (A port of the seed's `code_runner_docker.py`.)
//!
//! ```console
//! $ cargo run --example session_basic
//! ```
//!
//! Needs a running Docker daemon with the local image `llm-sandbox/python:latest`
//! (`scripts/build-images docker python`), and PyPI reachable for the library step.

use anyhow::{ensure, Context, Result};
use llm_sandbox::{BackendKind, Lang, Session};

#[tokio::main]
async fn main() -> Result<()> {
    // One hardened container lives as long as the session (default image of the language:
    // llm-sandbox/python:latest). keep_template(true) keeps the image built for the
    // libraries below, so a second run of this example reuses it.
    println!("opening a python session on docker ...");
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Docker)
        .keep_template(true)
        .open()
        .await
        .context("cannot open the session (is docker running, is the image built?)")?;

    // 1. Plain code: stdout, stderr and the exit code come back.
    let out = s.run("print('Hello, World!')", &[]).await?;
    println!("run: exit {:?}, stdout {:?}", out.exit_code, out.stdout);
    ensure!(out.success() && out.stdout == "Hello, World!\n", "{out:?}");

    // 2. Code needing a library: `six` is installed in a prepare phase (a template image
    //    with network), then the code runs in a fresh hardened container of that image;
    //    the files of /sandbox move along.
    println!("installing `six` and running code that imports it ...");
    let out = s
        .run("import six\nprint('six', six.__version__)", &["six"])
        .await?;
    println!(
        "run with libraries: exit {:?}, stdout {:?}",
        out.exit_code, out.stdout
    );
    ensure!(out.success() && out.stdout.starts_with("six "), "{out:?}");

    // 3. A shell command (/bin/sh -c) in /sandbox, as the unprivileged user, no network.
    let out = s
        .execute_command("id -u; ls /sandbox; python3 --version")
        .await?;
    println!(
        "execute_command: exit {:?}\n{}",
        out.exit_code,
        out.stdout.trim_end()
    );
    ensure!(out.success() && out.stdout.starts_with("1000\n"), "{out:?}");

    // 4. A failing program is a result, not an error: look at exit_code and stderr.
    let out = s.run("raise SystemExit('bye')", &[]).await?;
    println!(
        "failing run: exit {:?}, stderr {:?}",
        out.exit_code, out.stderr
    );
    ensure!(
        out.exit_code == Some(1) && out.stderr.contains("bye"),
        "{out:?}"
    );

    // Removes the container (and images built without keep_template).
    s.close().await?;
    println!("closed: the container is gone");
    Ok(())
}
