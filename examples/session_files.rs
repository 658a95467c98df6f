//! Files in and out of a Docker session: copy a CSV in, process it with Python, copy the
//! result out; then show that a symlink planted in the sandbox is refused by
//! `copy_from_runtime` (it never follows links out of /sandbox). (A port of the seed's
//! `copy_demo.py`.)
//!
//! ```console
//! $ cargo run --example session_files
//! ```
//!
//! Needs a running Docker daemon with `llm-sandbox/python:latest`.

use anyhow::{bail, ensure, Result};
use llm_sandbox::{BackendKind, Lang, Session};

#[tokio::main]
async fn main() -> Result<()> {
    // A scratch directory on the host for what goes in and what comes out.
    let host = tempfile::tempdir()?;
    let input = host.path().join("sales.csv");
    std::fs::write(&input, "item,amount\napple,3\npear,5\nplum,7\n")?;

    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Docker)
        .open()
        .await?;

    // In: a host file to a path under /sandbox (parent folders are created).
    s.copy_to_runtime(&input, "/sandbox/data/sales.csv").await?;
    println!("copied {} to /sandbox/data/sales.csv", input.display());

    // Process it in the sandbox: the code writes its result next to the input.
    let code = r#"
import csv
rows = list(csv.DictReader(open('/sandbox/data/sales.csv')))
total = sum(int(r['amount']) for r in rows)
with open('/sandbox/data/summary.txt', 'w') as f:
    f.write(f'{len(rows)} items, total {total}\n')
print('wrote summary.txt')
"#;
    let out = s.run(code, &[]).await?;
    println!("run: exit {:?}, stdout {:?}", out.exit_code, out.stdout);
    ensure!(out.success(), "{out:?}");

    // Out: a file under /sandbox to a host path.
    let result = host.path().join("summary.txt");
    s.copy_from_runtime("/sandbox/data/summary.txt", &result)
        .await?;
    let text = std::fs::read_to_string(&result)?;
    println!("copied the result out: {}", text.trim_end());
    ensure!(text == "3 items, total 15\n", "unexpected result {text:?}");

    // Untrusted code may plant a symlink hoping the host follows it: it is refused.
    s.execute_command("ln -s /etc/passwd /sandbox/innocent.txt")
        .await?;
    let stolen = host.path().join("stolen.txt");
    match s.copy_from_runtime("/sandbox/innocent.txt", &stolen).await {
        Ok(()) => bail!("a symlink out of the sandbox was followed"),
        Err(e) => println!("symlink refused, as it should be: {e}"),
    }
    ensure!(
        !stolen.exists(),
        "nothing may be written for a refused copy"
    );

    // Paths outside /sandbox (or climbing out with `..`) are refused before anything runs.
    let err = s
        .copy_from_runtime("/sandbox/../etc/passwd", &stolen)
        .await
        .expect_err("`..` must be refused");
    println!("`..` refused too: {err}");

    s.close().await?;
    println!("closed");
    Ok(())
}
