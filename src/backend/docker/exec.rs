//! `llm-sandbox exec` on a container engine: one hardened container, the program's
//! output streamed as it comes, the terminal's stdin forwarded, the exact exit status.

use super::container::{Container, Live};
use super::{
    base_env, endpoint, engine, job_image, job_steps, run_spec, signal_of_exit, SANDBOX_USER,
};
use crate::backend::ExecOutput;
use crate::lang;
use crate::plan::PlannedJob;
use crate::sandbox::StepKind;
use crate::spec::types::BackendKind;
use crate::stream::ChunkSender;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a streamed exec ended.
#[derive(Debug, Default)]
pub struct ExecEnd {
    /// Exit code (a signal N shows as 128+N, with `signal` set), timeout, compile output;
    /// `stdout`/`stderr` stay empty (the output went to the chunk channel).
    pub output: ExecOutput,
    /// Interrupted (Ctrl-C): the container was killed.
    pub cancelled: bool,
}

/// Runs `job` in a fresh container of `kind`'s engine: compile steps captured, the run
/// step's stdout/stderr sent to `out` as they come (no output cap, like the native
/// `exec`), `stdin` (when given) forwarded as it comes. The container is removed in
/// every case, cancellation included.
pub async fn exec_streaming(
    job: &PlannedJob,
    kind: BackendKind,
    stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    out: ChunkSender,
    cancel: &CancellationToken,
) -> Result<ExecEnd, String> {
    let ep = endpoint(job)?;
    // Its own scope: the container and the images it builds are its own to remove.
    let scope = crate::backend::Scope::new();
    let engine = engine::connect(&scope, &ep, kind).await?;
    let image = job_image(&engine, job, cancel)
        .await
        .map_err(|(m, log)| match log {
            Some(l) => format!("{m}\n{l}"),
            None => m,
        })?;
    if cancel.is_cancelled() {
        return Ok(ExecEnd {
            cancelled: true,
            ..Default::default()
        });
    }
    let env = base_env(job.lang, &job.env, false);
    let mut c = Container::start(engine.clone(), &run_spec(job, &image, env)).await?;
    let r = run_in(&mut c, job, stdin, out, cancel).await;
    c.remove().await;
    engine.finish_session().await;
    r
}

async fn run_in(
    c: &mut Container,
    job: &PlannedJob,
    mut stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    out: ChunkSender,
    cancel: &CancellationToken,
) -> Result<ExecEnd, String> {
    let mut end = ExecEnd::default();
    let source = lang::source_file(job.lang, &job.code);
    let tar = super::tarball::build(&[(source.clone(), job.code.as_bytes().to_vec(), 0o644)])
        .map_err(|e| format!("cannot pack the program: {e}"))?;
    if let Err(e) = c.put_tar(&tar, cancel).await {
        if cancel.is_cancelled() {
            end.cancelled = true;
            return Ok(end);
        }
        return Err(e);
    }
    let env = base_env(job.lang, &job.env, false);
    for step in job_steps(job, &source, false) {
        let run = step.kind == StepKind::Run;
        let live = if run {
            Live {
                tx: Some(out.clone()),
                discard: true,
                stdin: stdin.take(),
            }
        } else {
            Live::default()
        };
        let cap = if run { u64::MAX } else { step.capture_cap };
        let r = c
            .exec_live(
                &step.argv,
                Some(SANDBOX_USER),
                &env,
                None,
                cap,
                Duration::from_millis(step.timeout_ms),
                cancel,
                live,
            )
            .await?;
        if r.cancelled {
            end.cancelled = true;
            return Ok(end);
        }
        let o = &mut end.output;
        o.duration += r.duration;
        o.exit_code = r.exit_code.map(|c| c as i32);
        o.signal = signal_of_exit(o.exit_code);
        o.timed_out = r.timed_out;
        o.output_truncated = r.output_limit_hit;
        if !run && (r.exit_code != Some(0) || r.timed_out) {
            let mut all = r.stdout;
            all.extend_from_slice(&r.stderr);
            o.compile_output = Some(String::from_utf8_lossy(&all).into_owned());
            return Ok(end);
        }
    }
    Ok(end)
}
