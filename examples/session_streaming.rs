//! Streaming output from a session: a program's stdout and stderr as they are produced
//! (callback, then the same as a `Stream`), with the exact exit code at the end.
//!
//! ```console
//! $ cargo run --example session_streaming            # docker
//! $ cargo build && cargo run --example session_streaming -- native
//! ```
//!
//! Docker needs a running daemon with the local image `llm-sandbox/python:latest`
//! (`scripts/build-images docker python`). Native needs python3 on the host and the
//! `llm-sandbox` binary built next to the example (`cargo build`; it is the sandbox helper).

use anyhow::{ensure, Context, Result};
use futures_util::StreamExt;
use llm_sandbox::session::OutputEvent;
use llm_sandbox::{BackendKind, Lang, Session, StdStream};
use std::time::{Duration, Instant};

const PROGRAM: &str = r#"
import sys, time
for i in range(1, 4):
    print(f"step {i}/3", flush=True)
    time.sleep(0.5)
print("almost done", file=sys.stderr, flush=True)
sys.exit(3)
"#;

#[tokio::main]
async fn main() -> Result<()> {
    let backend = match std::env::args().nth(1).as_deref() {
        None | Some("docker") => BackendKind::Docker,
        Some("native") => BackendKind::Native,
        Some(other) => anyhow::bail!("unknown backend {other:?}: give `docker` or `native`"),
    };
    println!("opening a python session on {backend} ...");
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(backend)
        .timeout(Duration::from_secs(20))
        .open()
        .await
        .context("cannot open the session")?;

    // 1. A callback sees every chunk as it comes; the buffered result comes at the end.
    let t0 = Instant::now();
    let mut first_at = None;
    let out = s
        .run_streaming(PROGRAM, &[], |chunk| {
            let at = t0.elapsed();
            first_at.get_or_insert(at);
            let tag = match chunk.stream {
                StdStream::Stdout => "stdout",
                StdStream::Stderr => "stderr",
            };
            println!("  [{:>5} ms {tag}] {:?}", at.as_millis(), chunk.text());
        })
        .await?;
    let end = t0.elapsed();
    println!(
        "run_streaming: exit {:?} after {} ms; buffered stdout {:?}",
        out.exit_code,
        end.as_millis(),
        out.stdout
    );
    ensure!(out.exit_code == Some(3), "{out:?}");
    ensure!(out.stdout == "step 1/3\nstep 2/3\nstep 3/3\n", "{out:?}");
    let first_at = first_at.context("no output came")?;
    ensure!(
        end - first_at >= Duration::from_millis(900),
        "the first chunk came only {:?} before the end: not streamed",
        end - first_at
    );

    // 2. The same as a Stream of events, ending with the result.
    let mut events = s.execute_command_stream(
        "for i in 1 2 3; do echo tick $i; sleep 0.3; done; echo oops >&2; exit 7",
        None,
    );
    let mut code = None;
    while let Some(ev) = events.next().await {
        match ev {
            OutputEvent::Output(c) => println!("  [{:?}] {:?}", c.stream, c.text()),
            OutputEvent::Done(r) => {
                let out = r?;
                println!("execute_command_stream: exit {:?}", out.exit_code);
                code = out.exit_code;
            }
        }
    }
    drop(events);
    ensure!(code == Some(7), "exit code {code:?}");
    s.close().await?;
    println!("ok");
    Ok(())
}
