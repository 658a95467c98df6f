//! The library API (README, "Library API") on the Docker backend: one hardened container per session.
//!
//! Needs a running Docker daemon and the local images `llm-sandbox/{python,cpp,bash}`
//! (`scripts/engines docker && scripts/build-images docker`). When docker is not usable the
//! tests say "SKIPPED: ..." and pass, or fail under `CI=true`. The library test needs PyPI
//! (reachable directly or through the machine's proxy settings).

use crate::common;

use llm_sandbox::session::SessionError;
use llm_sandbox::{BackendKind, Lang, Session, SessionBuilder};
use std::process::Command;
use std::time::{Duration, Instant};

/// Skips the test (returns) when docker is not usable; panics under `CI=true`.
macro_rules! require_docker {
    () => {
        if !common::backend_selected("docker") {
            return;
        }
    };
}

fn docker_builder(lang: Lang) -> SessionBuilder {
    Session::builder().lang(lang).backend(BackendKind::Docker)
}

async fn open(lang: Lang) -> Session {
    docker_builder(lang)
        .open()
        .await
        .unwrap_or_else(|e| panic!("cannot open a {lang:?} session on docker: {e}"))
}

/// Runs a shell command in the session and asserts it exits 0; returns its stdout.
async fn sh(s: &mut Session, cmd: &str) -> String {
    let out = s
        .execute_command(cmd)
        .await
        .unwrap_or_else(|e| panic!("`{cmd}`: {e}"));
    assert!(out.success(), "`{cmd}` failed: {out:?}");
    out.stdout
}

/// The id of the session's container, read from inside it (docker bind-mounts
/// `/var/lib/docker/containers/<id>/hostname` as `/etc/hostname`).
async fn container_id(s: &mut Session) -> String {
    let mountinfo = sh(s, "cat /proc/self/mountinfo").await;
    mountinfo
        .lines()
        .find(|l| l.contains(" /etc/hostname "))
        .and_then(|l| l.split("/containers/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .map(String::from)
        .unwrap_or_else(|| panic!("no container id in the mountinfo:\n{mountinfo}"))
}

/// `docker <args>`: stdout, panicking when the CLI fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The containers of this test process (label `llm-sandbox.owner`) with this id, any state:
/// one line "`<id> <state>`" each.
fn our_container(id: &str) -> String {
    let owner = format!("label=llm-sandbox.owner={}", llm_sandbox::owner::prefix());
    docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &owner,
        "--filter",
        &format!("id={id}"),
        "--format",
        "{{.ID}} {{.State}}",
    ])
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_python_code() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let out = s
        .run(
            "import sys\nprint('hi')\nprint('oops', file=sys.stderr)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "hi\n");
    assert_eq!(out.stderr, "oops\n");
    assert!(out.success() && !out.timed_out && out.compile_output.is_none());
    // Resource figures come with the result (README, "Resource figures").
    let busy = s.run("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n", &[]).await.unwrap();
    let cpu = busy.cpu_ms.unwrap_or_else(|| panic!("no cpu_ms: {busy:?}"));
    assert!((250..5000).contains(&cpu), "cpu_ms {cpu}: {busy:?}");

    let out = s.run("raise SystemExit(3)", &[]).await.unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert!(!out.success());
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_compile_error_sets_compile_output() {
    require_docker!();
    let mut s = open(Lang::C).await;
    let out = s
        .run("int main(void) { return missing_symbol + ; }\n", &[])
        .await
        .unwrap();
    assert_ne!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.success());
    let compile = out
        .compile_output
        .as_deref()
        .expect("compile_output is set");
    assert!(compile.contains("error"), "{compile}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // A good program compiles and runs in the same session.
    let out = s
        .run(
            "#include <stdio.h>\nint main(void) { puts(\"compiled\"); return 4; }\n",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(4), "{out:?}");
    assert_eq!(out.stdout, "compiled\n");
    assert!(out.compile_output.is_none(), "{out:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_between_calls() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    sh(
        &mut s,
        "echo kept > state.txt && mkdir -p d && echo deep > d/e.txt",
    )
    .await;
    assert_eq!(
        sh(&mut s, "cat /sandbox/state.txt d/e.txt").await,
        "kept\ndeep\n"
    );
    // run() sees the same workdir.
    let out = s
        .run("print(open('/sandbox/state.txt').read().strip())", &[])
        .await
        .unwrap();
    assert_eq!(out.stdout, "kept\n", "{out:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libraries_installed_once() {
    require_docker!();
    let mut s = docker_builder(Lang::Python)
        .keep_template(false)
        .open()
        .await
        .unwrap();
    sh(&mut s, "echo before > carried.txt").await;

    let out = s
        .run("import six\nprint(six.__name__)", &["six"])
        .await
        .unwrap_or_else(|e| panic!("run with six: {e}"));
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "six\n");
    // The workdir moved to the container of the template image.
    assert_eq!(sh(&mut s, "cat carried.txt").await, "before\n");

    // Again with the same library: no new prepare phase, the same container (a marker in
    // its /tmp, which does not move between containers, is still there).
    sh(&mut s, "touch /tmp/same-container").await;
    let t0 = Instant::now();
    let out = s.run("import six\nprint('again')", &["six"]).await.unwrap();
    let again = t0.elapsed();
    assert_eq!(out.stdout, "again\n", "{out:?}");
    assert_eq!(
        sh(&mut s, "ls /tmp/same-container").await,
        "/tmp/same-container\n"
    );
    assert!(again < Duration::from_secs(5), "second run took {again:?}");

    // Without naming it, the library is still there.
    let out = s.run("import six\nprint('still')", &[]).await.unwrap();
    assert_eq!(out.stdout, "still\n", "{out:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_command_with_stdin() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let out = s
        .execute_command_with_stdin("read x; echo got $x; cat; exit 7", b"abc\nrest\n")
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(7), "{out:?}");
    assert_eq!(out.stdout, "got abc\nrest\n");
    let out = s
        .execute_command_with_stdin(
            "python3 -c 'import sys; print(sum(map(int, sys.stdin.read().split())))'",
            b"1 2 3 4\n",
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "10\n", "{out:?}");
    // Without stdin, a reader sees end of file at once.
    let out = s.execute_command("wc -c").await.unwrap();
    assert_eq!(out.stdout.trim(), "0", "{out:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_round_trip_nested() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let host = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let src = host.path().join("in.bin");
    std::fs::write(&src, &bytes).unwrap();

    s.copy_to_runtime(&src, "/sandbox/a/b/c/in.bin")
        .await
        .unwrap();
    s.copy_to_runtime(&src, "top.bin").await.unwrap();
    let listing = sh(
        &mut s,
        "find . -type f | sort; stat -c '%u %s' a/b/c/in.bin",
    )
    .await;
    assert_eq!(
        listing,
        format!(
            "./a/b/c/in.bin\n./top.bin\n{} 70000\n",
            llm_sandbox::backend::tarball::SANDBOX_UID
        )
    );

    // The sandbox makes a new file in a nested folder; it comes back byte for byte.
    sh(
        &mut s,
        "mkdir -p x/y && cat a/b/c/in.bin a/b/c/in.bin > x/y/out.bin",
    )
    .await;
    let dest = host.path().join("back/deeper/out.bin");
    s.copy_from_runtime("/sandbox/x/y/out.bin", &dest)
        .await
        .unwrap();
    let back = std::fs::read(&dest).unwrap();
    assert_eq!(back.len(), 2 * bytes.len());
    assert!(back[..bytes.len()] == bytes[..] && back[bytes.len()..] == bytes[..]);

    // Relative source paths name files under /sandbox too.
    let dest2 = host.path().join("top.bin");
    s.copy_from_runtime("top.bin", &dest2).await.unwrap();
    assert_eq!(std::fs::read(&dest2).unwrap(), bytes);

    // Missing files and folders are errors, not empty files.
    let missing = host.path().join("missing");
    assert!(s
        .copy_from_runtime("/sandbox/nope.txt", &missing)
        .await
        .is_err());
    assert!(s.copy_from_runtime("/sandbox/a/b", &missing).await.is_err());
    assert!(!missing.exists());
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_runtime_refuses_symlinks_and_dotdot() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let host = tempfile::tempdir().unwrap();
    sh(&mut s, "ln -s /etc/passwd /sandbox/passwd-link").await;
    let dest = host.path().join("stolen");
    let e = s
        .copy_from_runtime("/sandbox/passwd-link", &dest)
        .await
        .expect_err("a symlink to /etc/passwd must be refused");
    assert!(matches!(e, SessionError::BadPath(..)), "{e:?}");
    assert!(!dest.exists(), "nothing may be written for a refused copy");

    for bad in ["/sandbox/../etc/passwd", "../etc/passwd", "/etc/passwd"] {
        let e = s
            .copy_from_runtime(bad, &dest)
            .await
            .expect_err(&format!("{bad} must be refused"));
        assert!(matches!(e, SessionError::BadPath(..)), "{bad}: {e:?}");
    }
    // And into the sandbox.
    let src = host.path().join("f");
    std::fs::write(&src, "x").unwrap();
    let e = s
        .copy_to_runtime(&src, "/sandbox/../tmp/f")
        .await
        .expect_err("`..` must be refused");
    assert!(matches!(e, SessionError::BadPath(..)), "{e:?}");
    assert!(!dest.exists());
    s.close().await.unwrap();
}

/// A symlinked folder on the way is not followed either (as on the native backend, which
/// opens every component with `O_NOFOLLOW`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_runtime_refuses_a_symlinked_folder() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let host = tempfile::tempdir().unwrap();
    sh(&mut s, "ln -s /etc /sandbox/etcdir").await;
    let dest = host.path().join("stolen");
    let r = s.copy_from_runtime("/sandbox/etcdir/passwd", &dest).await;
    assert!(
        matches!(r, Err(SessionError::BadPath(..))),
        "copy_from_runtime followed the symlink /sandbox/etcdir -> /etc: {r:?}"
    );
    assert!(!dest.exists(), "nothing may be written for a refused copy");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_keeps_the_session() {
    require_docker!();
    let mut s = docker_builder(Lang::Python)
        .timeout(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    sh(&mut s, "echo survives > keep.txt").await;
    let t0 = Instant::now();
    let out = s
        .execute_command("echo started; sleep 5; echo never")
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert!(!out.success());
    assert!(!out.stdout.contains("never"), "{out:?}");
    assert!(took < Duration::from_secs(4), "the timeout took {took:?}");

    // The container lives on: files are still there and new commands run.
    assert_eq!(sh(&mut s, "cat keep.txt").await, "survives\n");
    let out = s.run("print('after the timeout')", &[]).await.unwrap();
    assert_eq!(out.stdout, "after the timeout\n", "{out:?}");
    // run() times out the same way.
    let out = s.run("import time\ntime.sleep(5)", &[]).await.unwrap();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(sh(&mut s, "cat keep.txt").await, "survives\n");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_by_default_and_not_root() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let dev = sh(&mut s, "cat /proc/net/dev").await;
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");
    let uid = llm_sandbox::backend::tarball::SANDBOX_UID;
    assert_eq!(sh(&mut s, "id -u; id -g").await, format!("{uid}\n{uid}\n"));
    let out = s.execute_command("touch /etc/x").await.unwrap();
    assert_ne!(
        out.exit_code,
        Some(0),
        "the root file system is writable: {out:?}"
    );
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_library_names_are_refused() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    for bad in [
        "six; touch /tmp/pwned",
        "$(id)",
        "six && rm -rf /",
        "a b",
        "`x`",
    ] {
        let e = s
            .run("print(1)", &[bad])
            .await
            .expect_err(&format!("library {bad:?} must be refused"));
        assert!(
            e.to_string().contains("invalid library name"),
            "{bad:?}: {e}"
        );
    }
    // Nothing ran, and the session still works.
    let out = s.run("print('fine')", &[]).await.unwrap();
    assert_eq!(out.stdout, "fine\n", "{out:?}");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_provided_client() {
    require_docker!();
    let client = bollard::Docker::connect_with_unix_defaults().expect("a bollard client");
    let mut s = docker_builder(Lang::Bash)
        .docker_client(client)
        .open()
        .await
        .unwrap();
    let out = s.run("echo \"from $(id -u)\"", &[]).await.unwrap();
    assert_eq!(
        out.stdout,
        format!("from {}\n", llm_sandbox::backend::tarball::SANDBOX_UID),
        "{out:?}"
    );
    let id = container_id(&mut s).await;
    assert!(our_container(&id).starts_with(&id));
    s.close().await.unwrap();
    assert_eq!(our_container(&id), "", "close left the container behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_removes_the_container() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let id = container_id(&mut s).await;
    assert_eq!(our_container(&id), format!("{id} running"));
    s.close().await.unwrap();
    assert_eq!(our_container(&id), "", "close left the container behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_leaves_no_container() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let id = container_id(&mut s).await;
    assert_eq!(our_container(&id), format!("{id} running"));
    drop(s);
    let t0 = Instant::now();
    loop {
        let left = our_container(&id);
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "10 s after the drop the container is still there: {left}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same Session API on Podman (the Docker module, through Podman's API service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_session_runs_code_libraries_and_files_then_leaves_nothing() {
    if !common::backend_selected("podman") {
        return;
    }
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Podman)
        .open()
        .await
        .unwrap_or_else(|e| panic!("cannot open a python session on podman: {e}"));
    let out = s
        .run("import os; print('hi', os.getuid())", &[])
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        format!("hi {}\n", llm_sandbox::backend::tarball::SANDBOX_UID),
        "{out:?}"
    );
    sh(&mut s, "echo kept > /sandbox/state.txt").await;
    let out = s
        .run("import six; print(six.__version__)", &["six==1.16.0"])
        .await
        .unwrap();
    assert_eq!(out.stdout, "1.16.0\n", "{out:?}");
    // The workdir moved into the container with the library.
    assert_eq!(sh(&mut s, "cat /sandbox/state.txt").await, "kept\n");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.txt");
    std::fs::write(&src, "from the host").unwrap();
    s.copy_to_runtime(&src, "/sandbox/sub/in.txt")
        .await
        .unwrap();
    assert_eq!(sh(&mut s, "cat /sandbox/sub/in.txt").await, "from the host");
    let back = dir.path().join("back.txt");
    s.copy_from_runtime("/sandbox/sub/in.txt", &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the host");
    let out = s
        .execute_command("python3 -c 'import ctypes; print(ctypes.CDLL(None).unshare(0x10000000))'")
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "-1", "unshare must be refused: {out:?}");
    s.close().await.unwrap();
    let me = format!("ls-{}-", std::process::id());
    for what in ["container", "volume"] {
        let left: Vec<_> = common::engine_objects("podman", what)
            .into_iter()
            .filter(|o| o.1.starts_with(&me) && o.2 != "template")
            .collect();
        assert!(left.is_empty(), "podman {what}s left after close: {left:?}");
    }
}

/// A session beside a run in the same process (README, "Architecture": each has its own
/// scope): the run's end removes its own warm containers, never the session's container,
/// and the session goes on working after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_the_same_process_leaves_the_session_alone() {
    require_docker!();
    let mut s = open(Lang::Python).await;
    let id = container_id(&mut s).await;
    let reports = common::Scratch::new()
        .run_in_process(
            "[[jobs]]\nname = \"beside\"\nlang = \"bash\"\nbackend = \"docker\"\ncode = \"echo beside\"\nexpect.stdout = \"beside\"\n",
        )
        .await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].status,
        llm_sandbox::Status::Passed,
        "{:?}",
        reports[0]
    );
    assert!(
        our_container(&id).ends_with("running"),
        "the run's end removed the session's container: {:?}",
        our_container(&id)
    );
    assert_eq!(sh(&mut s, "echo still here").await.trim(), "still here");
    s.close().await.expect("close");
}
