//! Streaming output: the library's streaming calls (native always, docker and podman with
//! the engine rule of tests/integration/common, kubernetes on the fake API server) and
//! `llm-sandbox exec --backend docker` streaming to the terminal.
//!
//! Docker needs a running daemon and the local images `llm-sandbox/{python,bash}`
//! (`scripts/engines docker && scripts/build-images docker`); without them the docker
//! tests print "SKIPPED: ..." and pass, or fail under `CI=true`.

use crate::common;

use futures_util::StreamExt;
use llm_sandbox::plan::job::ResolvedLimits;
use llm_sandbox::session::{ExecOutput, OutputEvent};
use llm_sandbox::{BackendKind, Lang, OutputChunk, Session, StdStream};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Skips the test (returns) when docker is not usable; panics under `CI=true`.
macro_rules! require_docker {
    () => {
        if !common::backend_selected("docker") {
            return;
        }
    };
}

async fn open(backend: BackendKind, lang: Lang, timeout: Duration, output: u64) -> Session {
    common::use_binary_as_helper();
    Session::builder()
        .lang(lang)
        .backend(backend)
        .timeout(timeout)
        .limits(ResolvedLimits {
            output,
            ..Default::default()
        })
        .open()
        .await
        .unwrap_or_else(|e| panic!("cannot open a {lang:?} session on {backend}: {e}"))
}

/// Chunks with the time each one reached the callback.
#[derive(Default)]
struct Seen {
    chunks: Vec<(Instant, OutputChunk)>,
}

impl Seen {
    fn text(&self, stream: StdStream) -> String {
        let bytes: Vec<u8> = self
            .chunks
            .iter()
            .filter(|(_, c)| c.stream == stream)
            .flat_map(|(_, c)| c.data.clone())
            .collect();
        String::from_utf8(bytes).unwrap()
    }
    /// When the stream's output first contained `needle`.
    fn first_seen(&self, stream: StdStream, needle: &str) -> Option<Instant> {
        let mut acc = Vec::new();
        for (t, c) in self.chunks.iter().filter(|(_, c)| c.stream == stream) {
            acc.extend_from_slice(&c.data);
            if String::from_utf8_lossy(&acc).contains(needle) {
                return Some(*t);
            }
        }
        None
    }
}

/// Runs `cmd` streaming; returns what the callback saw, the result, and when it returned.
async fn stream_cmd(
    s: &mut Session,
    cmd: &str,
    stdin: Option<&[u8]>,
) -> (Seen, ExecOutput, Instant) {
    let mut seen = Seen::default();
    let out = s
        .execute_command_with_stdin_streaming(cmd, stdin, |c| seen.chunks.push((Instant::now(), c)))
        .await
        .unwrap_or_else(|e| panic!("`{cmd}`: {e}"));
    (seen, out, Instant::now())
}

/// Output arrives while the program still runs, in order per stream, separated by stream;
/// the buffered result is the same bytes and has the exact exit code.
async fn chunks_come_as_produced(backend: BackendKind) {
    let mut s = open(backend, Lang::Bash, Duration::from_secs(30), 1 << 20).await;
    let started = Instant::now();
    let (seen, out, done) = stream_cmd(
        &mut s,
        "echo first; echo warn-1 >&2; sleep 3; echo second; echo warn-2 >&2; exit 3",
        None,
    )
    .await;
    let first = seen
        .first_seen(StdStream::Stdout, "first")
        .unwrap_or_else(|| panic!("no `first` chunk: {out:?}"));
    let warn = seen.first_seen(StdStream::Stderr, "warn-1").unwrap();
    // The program slept 3 s after the first lines: they were seen well before it ended.
    assert!(
        done.duration_since(first) >= Duration::from_millis(2000),
        "`first` reached the callback only {:?} before the program ended (started {:?} before)",
        done.duration_since(first),
        done.duration_since(started)
    );
    assert!(done.duration_since(warn) >= Duration::from_millis(2000));
    assert_eq!(seen.text(StdStream::Stdout), "first\nsecond\n");
    assert_eq!(seen.text(StdStream::Stderr), "warn-1\nwarn-2\n");
    assert_eq!(out.stdout, "first\nsecond\n");
    assert_eq!(out.stderr, "warn-1\nwarn-2\n");
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out && !out.output_truncated);

    // Many small writes keep their order.
    let (seen, out, _) = stream_cmd(
        &mut s,
        "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done",
        None,
    )
    .await;
    let want: String = (0..300).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(seen.text(StdStream::Stdout), want);
    assert_eq!(out.stdout, want);
    s.close().await.unwrap();
}

/// Exact exit codes, a signal, a timeout, stdin.
async fn exit_status_signal_timeout_stdin(backend: BackendKind) {
    let mut s = open(backend, Lang::Bash, Duration::from_secs(3), 1 << 20).await;
    for code in [0, 3, 255] {
        let (seen, out, _) =
            stream_cmd(&mut s, &format!("echo out-{code}; exit {code}"), None).await;
        assert_eq!(out.exit_code, Some(code), "{out:?}");
        assert_eq!(seen.text(StdStream::Stdout), format!("out-{code}\n"));
        assert!(!out.timed_out);
    }

    let (seen, out, _) = stream_cmd(&mut s, "echo before; kill -9 $$; echo after", None).await;
    assert_eq!(out.signal, Some(9), "{out:?}");
    assert!(
        out.exit_code.is_none() || out.exit_code == Some(137),
        "{out:?}"
    );
    assert_eq!(seen.text(StdStream::Stdout), "before\n");

    let t0 = Instant::now();
    let (seen, out, _) = stream_cmd(&mut s, "echo before; sleep 60", None).await;
    assert!(out.timed_out, "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert_eq!(seen.text(StdStream::Stdout), "before\n");

    // The session still works after the timeout; stdin reaches the command.
    let (seen, out, _) =
        stream_cmd(&mut s, "tr a-z A-Z; echo done >&2", Some(b"hello\nworld\n")).await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(seen.text(StdStream::Stdout), "HELLO\nWORLD\n");
    assert_eq!(seen.text(StdStream::Stderr), "done\n");
    // No stdin: the command reads EOF at once.
    let (seen, out, _) = stream_cmd(&mut s, "wc -c", None).await;
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(seen.text(StdStream::Stdout).trim(), "0");
    s.close().await.unwrap();
}

/// Past the output limit the chunks stop at exactly the cap, as the buffered stdout does,
/// and the program is stopped.
async fn output_cap(backend: BackendKind) {
    let mut s = open(backend, Lang::Bash, Duration::from_secs(20), 10_000).await;
    let t0 = Instant::now();
    let (seen, out, _) = stream_cmd(&mut s, "echo small >&2; sleep 1; yes aaaaaaaaa", None).await;
    assert!(out.output_truncated, "{out:?}");
    assert!(
        !out.timed_out,
        "stopped by the cap, not the timeout: {:?}",
        t0.elapsed()
    );
    let streamed = seen.text(StdStream::Stdout);
    assert_eq!(streamed.len(), 10_000);
    assert_eq!(out.stdout, streamed);
    assert!(streamed.starts_with("aaaaaaaaa\naaaaaaaaa\n"));
    assert_eq!(seen.text(StdStream::Stderr), "small\n");
    // Under the cap nothing is cut.
    let (seen, out, _) = stream_cmd(&mut s, "head -c 9999 /dev/zero | tr '\\0' b", None).await;
    assert!(!out.output_truncated, "{out:?}");
    assert_eq!(seen.text(StdStream::Stdout), "b".repeat(9999));
    s.close().await.unwrap();
}

/// `run_streaming` runs a program (chunks before the end), `run_stream` yields the same
/// as a Stream ending with the exit status.
async fn run_program(backend: BackendKind) {
    let mut s = open(backend, Lang::Python, Duration::from_secs(30), 1 << 20).await;
    let code = "import sys, time\nprint('first', flush=True)\ntime.sleep(2)\nprint('oops', file=sys.stderr)\nprint('second')\nsys.exit(255)\n";
    let mut seen = Seen::default();
    let out = s
        .run_streaming(code, &[], |c| seen.chunks.push((Instant::now(), c)))
        .await
        .unwrap();
    let done = Instant::now();
    assert_eq!(out.exit_code, Some(255), "{out:?}");
    assert_eq!(seen.text(StdStream::Stdout), "first\nsecond\n");
    assert_eq!(seen.text(StdStream::Stderr), "oops\n");
    let first = seen.first_seen(StdStream::Stdout, "first").unwrap();
    assert!(done.duration_since(first) >= Duration::from_millis(1300));

    let events: Vec<(Instant, OutputEvent)> = s
        .run_stream(code, &[])
        .map(|e| (Instant::now(), e))
        .collect()
        .await;
    let (end_at, last) = events.last().unwrap();
    let OutputEvent::Done(Ok(out)) = last else {
        panic!("the stream did not end with Done(Ok): {last:?}")
    };
    assert_eq!(out.exit_code, Some(255));
    assert_eq!(out.stdout, "first\nsecond\n");
    let dones = events
        .iter()
        .filter(|(_, e)| matches!(e, OutputEvent::Done(_)))
        .count();
    assert_eq!(dones, 1);
    let (first_at, _) = events
        .iter()
        .find(|(_, e)| matches!(e, OutputEvent::Output(c) if c.text().contains("first")))
        .unwrap();
    assert!(end_at.duration_since(*first_at) >= Duration::from_millis(1300));
    let stdout: String = events
        .iter()
        .filter_map(|(_, e)| match e {
            OutputEvent::Output(c) if c.stream == StdStream::Stdout => Some(c.text().into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(stdout, "first\nsecond\n");
    s.close().await.unwrap();
}

/// A compiled language: only the run step streams; a failed compilation streams nothing
/// and comes back in `compile_output`.
async fn compiled(backend: BackendKind) {
    let mut s = open(backend, Lang::Cpp, Duration::from_secs(60), 1 << 20).await;
    let mut seen = Seen::default();
    let out = s
        .run_streaming(
            "#include <cstdio>\nint main(){ std::puts(\"compiled\"); return 3; }\n",
            &[],
            |c| seen.chunks.push((Instant::now(), c)),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert_eq!(seen.text(StdStream::Stdout), "compiled\n");
    assert_eq!(seen.text(StdStream::Stderr), "");
    let mut seen = Seen::default();
    let out = s
        .run_streaming("int main(){ retur 1; }\n", &[], |c| {
            seen.chunks.push((Instant::now(), c))
        })
        .await
        .unwrap();
    assert!(seen.chunks.is_empty(), "{:?}", seen.chunks);
    assert!(
        out.compile_output
            .as_deref()
            .unwrap_or("")
            .contains("retur"),
        "{out:?}"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_compiled() {
    if let Err(e) = llm_sandbox::lang::probe_cached(Lang::Cpp) {
        if let Some(flag) = common::strict() {
            panic!("g++ is required ({flag}): {e}");
        }
        common::skipped(format!("native C++: {e}"));
        return;
    }
    compiled(BackendKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compiled() {
    require_docker!();
    compiled(BackendKind::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_chunks_come_as_produced() {
    chunks_come_as_produced(BackendKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_exit_status_signal_timeout_stdin() {
    exit_status_signal_timeout_stdin(BackendKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_output_cap() {
    output_cap(BackendKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_run_program() {
    run_program(BackendKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_chunks_come_as_produced() {
    require_docker!();
    chunks_come_as_produced(BackendKind::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_exit_status_signal_timeout_stdin() {
    require_docker!();
    exit_status_signal_timeout_stdin(BackendKind::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_output_cap() {
    require_docker!();
    output_cap(BackendKind::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_run_program() {
    require_docker!();
    run_program(BackendKind::Docker).await;
}

/// Skips the test (returns) when podman is not usable; panics under `CI=true`.
macro_rules! require_podman {
    () => {
        if !common::backend_selected("podman") {
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_chunks_come_as_produced() {
    require_podman!();
    chunks_come_as_produced(BackendKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_exit_status_signal_timeout_stdin() {
    require_podman!();
    exit_status_signal_timeout_stdin(BackendKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_output_cap() {
    require_podman!();
    output_cap(BackendKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_run_program() {
    require_podman!();
    run_program(BackendKind::Podman).await;
}

// ---- kubernetes: the fake API server (its pods are native sandboxes, each exec a
// WebSocket that streams as the real API server's does) ----------------------------------

/// A fake cluster for this test (its own process under nextest), found through
/// $KUBECONFIG as a session finds a real one.
fn fake_cluster() -> common::FakeCluster {
    let fake = common::FakeCluster::start();
    std::env::set_var("KUBECONFIG", &fake.kubeconfig);
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_chunks_come_as_produced() {
    let _cluster = fake_cluster();
    chunks_come_as_produced(BackendKind::Kubernetes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_exit_status_signal_timeout_stdin() {
    let _cluster = fake_cluster();
    exit_status_signal_timeout_stdin(BackendKind::Kubernetes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_output_cap() {
    let _cluster = fake_cluster();
    output_cap(BackendKind::Kubernetes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_run_program() {
    let _cluster = fake_cluster();
    run_program(BackendKind::Kubernetes).await;
}

// ---- the `exec` command on docker ------------------------------------------------------

/// `llm-sandbox exec --backend docker` with piped stdio.
fn exec_docker(lang: &str, code: &str, extra: &[&str]) -> std::process::Child {
    exec_on("docker", lang, code, extra)
}

/// `llm-sandbox exec --backend ENGINE` with piped stdio.
fn exec_on(engine: &str, lang: &str, code: &str, extra: &[&str]) -> std::process::Child {
    let mut c = common::bin();
    c.args(["exec", "--lang", lang, "--backend", engine, "-c", code])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().expect("cannot start llm-sandbox")
}

/// Reads `r` line by line in a thread, each line with the time it came.
fn timed_lines(r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<(Instant, String)>> {
    std::thread::spawn(move || {
        BufReader::new(r)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect()
    })
}

/// The containers a process (by pid) left on docker.
fn containers_of(pid: u32) -> String {
    common::containers_on("docker", pid)
}

#[test]
fn exec_docker_streams_and_exits_with_the_program() {
    require_docker!();
    let code = "import sys, time\nprint('first', flush=True)\nprint('to-stderr', file=sys.stderr, flush=True)\ntime.sleep(3)\nprint('second')\nsys.exit(4)\n";
    let mut child = exec_docker("python", code, &[]);
    drop(child.stdin.take());
    let out = timed_lines(child.stdout.take().unwrap());
    let err = timed_lines(child.stderr.take().unwrap());
    let status = child.wait().unwrap();
    let ended = Instant::now();
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    let lines: Vec<&str> = out.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(lines, ["first", "second"], "stderr: {err:?}");
    assert!(err.iter().any(|(_, l)| l == "to-stderr"), "{err:?}");
    assert!(
        ended.duration_since(out[0].0) >= Duration::from_millis(2000),
        "`first` came only {:?} before the end",
        ended.duration_since(out[0].0)
    );
    assert_eq!(status.code(), Some(4));
    assert_eq!(containers_of(child.id()), "");
}

#[test]
fn exec_docker_exit_codes_signal_timeout() {
    require_docker!();
    for (code, want) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -9 $$", 137),
    ] {
        let mut child = exec_docker("bash", code, &[]);
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(want), "`{code}`: {out:?}");
    }
    let t0 = Instant::now();
    let mut child = exec_docker("bash", "echo up; sleep 60", &["--timeout", "2s"]);
    drop(child.stdin.take());
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(containers_of(pid), "");
}

#[test]
fn exec_docker_forwards_stdin() {
    require_docker!();
    // The terminal's stdin goes to the program as it comes: one line answered before the
    // next is written.
    let mut child = exec_docker(
        "python",
        "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n",
        &[],
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for word in ["hello", "world"] {
        writeln!(stdin, "{word}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{}\n", word.to_uppercase()));
    }
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // `-`: the program comes from stdin; the program itself reads EOF.
    let mut c = common::bin();
    let mut child = c
        .args(["exec", "--lang", "python", "--backend", "docker", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"import sys\nprint(repr(sys.stdin.read()))\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "''\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn exec_docker_ctrl_c_removes_the_container() {
    require_docker!();
    let mut child = exec_docker("bash", "echo up; sleep 60", &[]);
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    assert_ne!(containers_of(pid), "", "the container should be running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert_eq!(containers_of(pid), "");
}

#[test]
fn exec_native_ctrl_c_exits_130() {
    let mut child = common::bin()
        .args(["exec", "--lang", "bash", "-c", "echo up; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let t0 = Instant::now();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[test]
fn exec_podman_streams_exits_and_cleans_up() {
    require_podman!();
    let mut child = exec_on(
        "podman",
        "bash",
        "echo first; echo warn >&2; sleep 3; echo second; exit 3",
        &[],
    );
    drop(child.stdin.take());
    let out = timed_lines(child.stdout.take().unwrap());
    let err = timed_lines(child.stderr.take().unwrap());
    let status = child.wait().unwrap();
    let ended = Instant::now();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let lines: Vec<&str> = out.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(lines, ["first", "second"], "stderr: {err:?}");
    assert!(err.iter().any(|(_, l)| l == "warn"), "{err:?}");
    assert!(ended.duration_since(out[0].0) >= Duration::from_millis(2000));
    assert_eq!(status.code(), Some(3));
    assert_eq!(common::containers_on("podman", child.id()), "");

    // Ctrl-C: exit 130, the container is gone.
    let mut child = exec_on("podman", "bash", "echo up; sleep 60", &[]);
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(common::containers_on("podman", pid), "");
}
