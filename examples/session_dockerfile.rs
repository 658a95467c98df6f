//! A session whose image is built from a Dockerfile (`examples/docker/Dockerfile`: the
//! local python image plus a module `example_greeting`). With `keep_template(false)` the
//! built image is removed again when the session closes.
//!
//! ```console
//! $ cargo run --example session_dockerfile
//! ```
//!
//! Needs a running Docker daemon with `llm-sandbox/python:latest`
//! (`scripts/build-images docker python`).

use anyhow::{ensure, Context, Result};
use llm_sandbox::{BackendKind, Lang, Session};
use std::path::Path;

#[tokio::main]
async fn main() -> Result<()> {
    // The Dockerfile's folder is the build context; the image is tagged by the hash of the
    // context, so an unchanged Dockerfile is built once and then reused.
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker/Dockerfile");
    println!(
        "building {} and opening a session ...",
        dockerfile.display()
    );
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Docker)
        .dockerfile(&dockerfile)
        .keep_template(false)
        .open()
        .await
        .context("cannot build the image or open the session")?;

    // The module the Dockerfile's RUN added is importable: we run in that image.
    let out = s
        .run(
            "import example_greeting\nprint(example_greeting.GREETING)",
            &[],
        )
        .await?;
    println!("run: exit {:?}, stdout {:?}", out.exit_code, out.stdout);
    ensure!(
        out.success() && out.stdout == "hello from examples/docker/Dockerfile\n",
        "{out:?}"
    );

    // The sandbox is hardened whatever the image says: read-only root, uid 1000.
    let out = s
        .execute_command("id -u; touch /usr/x 2>/dev/null && echo writable || echo read-only")
        .await?;
    println!("execute_command:\n{}", out.stdout.trim_end());
    ensure!(out.stdout == "1000\nread-only\n", "{out:?}");

    // keep_template(false): close removes the container and the image built above.
    s.close().await?;
    println!("closed: container and built image removed");
    Ok(())
}
