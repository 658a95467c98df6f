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
