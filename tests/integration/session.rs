//! The library API (README, "Library API") on the native backend.

use crate::common;

use llm_sandbox::session::SessionError;
use llm_sandbox::{BackendKind, Lang, Session};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_copy_in_execute_copy_out_close() {
    common::use_binary_as_helper();
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Native)
        .open()
        .await
        .unwrap();
    let out = s.run("print('hi')", &[]).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout, "hi\n");
    // Resource figures come with the result (README, "Resource figures").
    let busy = s.run("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n", &[]).await.unwrap();
    let cpu = busy.cpu_ms.unwrap_or_else(|| panic!("no cpu_ms: {busy:?}"));
    assert!((250..5000).contains(&cpu), "cpu_ms {cpu}: {busy:?}");
    let peak = busy.peak_memory_bytes.unwrap_or(0);
    assert!((1 << 20..1 << 30).contains(&peak), "peak {peak}: {busy:?}");

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("test.py");
    std::fs::write(
        &input,
        "open('/sandbox/out.txt', 'w').write('from the sandbox')\nprint(40 + 2)\n",
    )
    .unwrap();
    s.copy_to_runtime(&input, "/sandbox/test.py").await.unwrap();
    let out = s.execute_command("python3 /sandbox/test.py").await.unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "42");
    let back = dir.path().join("out.txt");
    s.copy_from_runtime("/sandbox/out.txt", &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the sandbox");

    // The workdir carries over; nothing else does (each command is a fresh sandbox).
    let out = s
        .execute_command("ls /sandbox; ls /tmp | wc -l; echo $HOME; id -u")
        .await
        .unwrap();
    assert!(
        out.stdout.contains("out.txt") && out.stdout.contains("test.py"),
        "{out:?}"
    );
    assert!(out.stdout.contains("/sandbox\n1000"), "{out:?}");

    // Exact exit codes, stdin.
    let out = s
        .execute_command_with_stdin("read x; echo got $x; exit 7", b"abc\n")
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(7));
    assert_eq!(out.stdout, "got abc\n");
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_in_the_sandbox_are_never_followed() {
    common::use_binary_as_helper();
    let mut s = Session::builder().lang(Lang::Bash).open().await.unwrap();
    let out = s
        .execute_command("ln -s /etc/hostname /sandbox/link; mkdir d; ln -s / d/up")
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let e = s
        .copy_from_runtime("/sandbox/link", dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, SessionError::BadPath(..)), "{e}");
    let e = s
        .copy_from_runtime("/sandbox/d/up/etc/hostname", dir.path().join("y"))
        .await
        .unwrap_err();
    assert!(matches!(e, SessionError::BadPath(..)), "{e}");
    // Writing through a planted symlink is refused too.
    let src = dir.path().join("src");
    std::fs::write(&src, "x").unwrap();
    assert!(s.copy_to_runtime(&src, "/sandbox/link").await.is_err());
    assert!(s.copy_to_runtime(&src, "/etc/passwd").await.is_err());
    assert!(s.copy_to_runtime(&src, "/sandbox/../x").await.is_err());
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_errors_timeouts_and_unavailable_backends() {
    common::use_binary_as_helper();
    let mut s = Session::builder()
        .lang(Lang::C)
        .timeout(Duration::from_secs(1))
        .open()
        .await
        .unwrap();
    let out = s.run("int main(void) { return 3 }", &[]).await.unwrap();
    assert_ne!(out.exit_code, Some(0));
    assert!(
        out.compile_output
            .as_deref()
            .unwrap_or("")
            .contains("error"),
        "{out:?}"
    );
    let out = s.run("int main(void) { for (;;); }", &[]).await.unwrap();
    assert!(out.timed_out && out.exit_code.is_none(), "{out:?}");
    s.close().await.unwrap();
}

/// The sandbox servers this test process started (children running the helper).
fn our_sandbox_servers() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": the ppid is the second field after the comm.
        let ppid = stat.rsplit(") ").next().and_then(|r| r.split(' ').nth(1));
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let helper = cmd
            .split(|b| *b == 0)
            .any(|a| a == llm_sandbox::sandbox::HELPER_SUBCOMMAND.as_bytes());
        if ppid == Some(me.as_str()) && helper {
            found.push(pid);
        }
    }
    found.sort();
    found
}

/// A session and a run in one process each have their own native sandbox servers (their
/// own scope, README "Architecture"): the run's end stops its servers, never the
/// session's, which goes on using the one it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_the_same_process_leaves_the_sessions_servers_alone() {
    common::use_binary_as_helper();
    let mut s = Session::builder()
        .lang(Lang::Bash)
        .backend(BackendKind::Native)
        .open()
        .await
        .unwrap();
    assert_eq!(s.execute_command("echo one").await.unwrap().stdout, "one\n");
    let before = our_sandbox_servers();
    assert_eq!(before.len(), 1, "{before:?}");

    let reports = common::Scratch::new()
        .run_in_process(
            "[[jobs]]\nname = \"beside\"\nlang = \"bash\"\ncode = \"echo beside\"\nexpect.stdout = \"beside\"\n",
        )
        .await;
    assert_eq!(
        reports[0].status,
        llm_sandbox::Status::Passed,
        "{:?}",
        reports[0]
    );
    // The run's server is gone, the session's is still there and still used.
    assert_eq!(our_sandbox_servers(), before);
    assert_eq!(s.execute_command("echo two").await.unwrap().stdout, "two\n");
    assert_eq!(our_sandbox_servers(), before);
    s.close().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !our_sandbox_servers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        our_sandbox_servers(),
        Vec::<u32>::new(),
        "close stops the session's servers"
    );
}
