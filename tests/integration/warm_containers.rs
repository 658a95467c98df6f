//! Warm containers: a container that ran one job is reused for the next only when nothing
//! of the first job is left (processes, files, IPC objects), and jobs never see each other.

use crate::common;

use common::Scratch;

/// The first job leaves every trace it can; the second looks for them. Run with `-j 1` so
/// both use the same warm container (checked through the start time of its pid 1).
const JOBS: &str = r#"
[defaults]
lang = "bash"

[[jobs]]
name = "a-litter"
code = '''
(setsid sleep 2718 &); nohup sleep 2719 >/dev/null 2>&1 &
echo secret-a > /sandbox/a.txt; echo secret-a > /tmp/a.txt; echo secret-a > /dev/shm/a.txt
mkdir -p /sandbox/locked/deep && echo x > /sandbox/locked/deep/f && chmod 000 /sandbox/locked
touch /tmp/.hidden
ipcmk -M 4096 >/dev/null && echo "shm made: $(ipcs -m | grep -c '^0x')"
echo "id=$(cut -d' ' -f22 /proc/1/stat)"
'''

[[jobs]]
name = "b-looks"
code = '''
echo "id=$(cut -d' ' -f22 /proc/1/stat)"
ls -A /sandbox /tmp /dev/shm
ps -eo user,comm --no-headers | grep -v -e ps -e bash -e grep -e cat -e docker-init -e catatonit -e awk || true
echo "shm=$(ipcs -m | grep -c '^0x')"
echo end
'''
"#;

#[test]
fn docker_warm_container_is_clean_for_the_next_job() {
    warm_container_is_clean("docker");
}

#[test]
fn podman_warm_container_is_clean_for_the_next_job() {
    warm_container_is_clean("podman");
}

fn warm_container_is_clean(engine: &str) {
    if !common::backend_selected(engine) {
        return;
    }
    let dir = Scratch::new();
    dir.write("warm.toml", JOBS);
    let run = dir.run_json(&["-j", "1", "--backend", engine, "warm.toml"]);
    let (out_a, out_b) = same_container_nothing_left(engine, &run);
    assert!(out_a.contains("shm made: 1"), "{out_a}");
    assert!(
        out_b.contains("shm=0"),
        "{engine}: a System V segment survived:\n{out_b}"
    );
    assert!(out_b.contains("end"), "{out_b}");

    // The same file with fresh containers: each job has its own container.
    let run = dir.run_json(&[
        "-j",
        "1",
        "--fresh-containers",
        "--backend",
        engine,
        "warm.toml",
    ]);
    let a = run.assert_status("a-litter", "passed");
    let b = run.assert_status("b-looks", "passed");
    assert_ne!(
        pid1_started(common::field(a, "stdout")),
        pid1_started(common::field(b, "stdout")),
        "--fresh-containers gives every job a new container"
    );
}

/// What a JOBS job printed of its container's pid 1 (`id=`: its start time).
fn pid1_started(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("id="))
        .unwrap_or("")
}

/// That two jobs' outputs name the same pid 1 (`id=`): they ran in one warm container.
fn assert_same_container(engine: &str, a: &str, b: &str) {
    assert!(!pid1_started(a).is_empty(), "{a}");
    assert_eq!(
        pid1_started(a),
        pid1_started(b),
        "{engine}: both jobs ran in the same warm container"
    );
}

/// The stdout of JOBS' two jobs, after checking that both passed in the same container
/// (the start time of its pid 1) and that the second found none of the first's traces.
fn same_container_nothing_left(engine: &str, run: &common::Run) -> (String, String) {
    let out_a = common::field(run.assert_status("a-litter", "passed"), "stdout").to_string();
    let out_b = common::field(run.assert_status("b-looks", "passed"), "stdout").to_string();
    assert_same_container(engine, &out_a, &out_b);
    for trace in ["a.txt", "locked", ".hidden", "sleep"] {
        assert!(
            !out_b.contains(trace),
            "{engine}: `{trace}` survived into the next job:\n{out_b}"
        );
    }
    (out_a, out_b)
}

/// `llm-sandbox run ... 2>&1 | head` with debug logs on: once the pipe is closed every log
/// write fails. The run still finishes every job and removes its containers, including
/// the warm containers started in the background to replace those that reached
/// `recycle_after` (a failed log write once panicked such a start, and the jobs waiting for
/// it waited for ever).
#[test]
fn docker_run_survives_a_closed_stderr() {
    run_survives_a_closed_stderr("docker");
}

#[test]
fn podman_run_survives_a_closed_stderr() {
    run_survives_a_closed_stderr("podman");
}

fn run_survives_a_closed_stderr(engine: &str) {
    if !common::backend_selected(engine) {
        return;
    }
    let dir = Scratch::new();
    dir.write(
        "closed.toml",
        &format!(
            "[backends.{engine}]\nrecycle_after = 2\n\n[defaults]\nlang = \"bash\"\n\n\
             [[jobs]]\nname = \"j-{{{{ matrix.i }}}}\"\nmatrix.i = [1, 2, 3, 4, 5, 6, 7, 8]\n\
             code = \"echo ok\"\nexpect.stdout = \"ok\"\n"
        ),
    );
    let mut child = dir
        .cmd()
        .args(["run", "-j", "2", "--backend", engine, "--no-progress"])
        .args(["--json", "report.json", "closed.toml"])
        .env("LLM_SANDBOX_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the llm-sandbox binary runs");
    // Both read ends closed before the run writes anything: every write fails (EPIPE).
    drop(child.stdout.take());
    drop(child.stderr.take());
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end within 3 minutes with its stderr closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("report.json"),
    )
    .expect("a JSON report");
    assert_eq!(report["summary"]["passed"], 8, "{report:#}");
    // Nothing of this run is left on the engine.
    let left = common::containers_on(engine, pid);
    assert!(left.is_empty(), "containers of the run left: {left}");
}

#[test]
fn docker_run_starts_no_more_containers_than_it_has_jobs() {
    starts_no_more_containers_than_jobs("docker");
}

#[test]
fn podman_run_starts_no_more_containers_than_it_has_jobs() {
    starts_no_more_containers_than_jobs("podman");
}

/// One job with `-j 3`: one warm container, not three (the pool is told how many jobs
/// will take its containers). Watched through the engine while the run lasts, by the
/// names the runner gives its containers (`ls-<its pid>-…`).
fn starts_no_more_containers_than_jobs(engine: &str) {
    if !common::backend_selected(engine) {
        return;
    }
    let dir = Scratch::new();
    dir.write(
        "one.toml",
        "[[jobs]]\nname = \"one\"\nlang = \"bash\"\ncode = \"sleep 1; echo ok\"\nexpect.stdout = \"ok\\n\"\n",
    );
    let mut child = dir
        .cmd()
        .args([
            "run",
            "--no-progress",
            "-j",
            "3",
            "--backend",
            engine,
            "one.toml",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen: Vec<String> = Vec::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        for name in common::containers_on(engine, pid).lines() {
            if !seen.iter().any(|s| s == name) {
                seen.push(name.to_string());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{engine}: the job failed");
    assert_eq!(seen.len(), 1, "{engine}: one job, containers {seen:?}");
}

#[test]
fn docker_image_the_agent_cannot_run_in_gets_warm_containers_without_it() {
    agent_cannot_run("docker");
}

#[test]
fn podman_image_the_agent_cannot_run_in_gets_warm_containers_without_it() {
    agent_cannot_run("podman");
}

/// An image the agent (this binary, bind-mounted) cannot start in: here one without the
/// TLS libraries it links (as with an image of another libc). Its warm containers run
/// without an agent instead (one exec per step, the shell proof between jobs): the jobs
/// pass, the second in the first one's container, nothing of the first reaches it. (Less
/// the System V segment: the shell cleanup, root without CAP_SYS_ADMIN, cannot remove the
/// job user's, so such a job costs its container, which is replaced.)
fn agent_cannot_run(engine: &str) {
    if !common::backend_selected(engine) {
        return;
    }
    let dir = Scratch::new();
    let nonce = format!("{}-{}", std::process::id(), engine);
    dir.write(
        "img/Dockerfile",
        &format!(
            "FROM llm-sandbox/base:latest\nLABEL test.nonce={nonce}\n\
             RUN rm -f /usr/lib/x86_64-linux-gnu/libssl.so.3 /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n"
        ),
    );
    dir.write(
        "warm.toml",
        &JOBS
            .replacen(
                "[defaults]\n",
                "[defaults]\ndockerfile = \"img/Dockerfile\"\n",
                1,
            )
            .replace("ipcmk -M 4096", "true"),
    );
    let run = common::run_report(
        dir.cmd()
            .env("LLM_SANDBOX_LOG", "llm_sandbox=debug")
            .args(["run", "--no-progress", "-j", "1", "--backend", engine])
            .args(["--json", "-", "warm.toml"]),
    );
    assert!(
        run.stderr.contains("no agent in a container"),
        "{engine}: the agent started after all (the test proves nothing):\n{}",
        run.stderr
    );
    let (_, b) = same_container_nothing_left(engine, &run);
    assert!(b.contains("shm=0") && b.contains("end"), "{b}");
}

#[test]
fn docker_job_that_closed_a_netlink_socket_keeps_its_container() {
    netlink_closed_keeps_container("docker");
}

#[test]
fn podman_job_that_closed_a_netlink_socket_keeps_its_container() {
    netlink_closed_keeps_container("podman");
}

/// A routing netlink socket closed as the job ends is freed by the kernel only after an RCU
/// grace period, when the agent may already be comparing the network namespace with what
/// it showed when new: it must not count (the socket is gone from `/proc/net/netlink` at
/// once), or every such job would cost its container.
fn netlink_closed_keeps_container(engine: &str) {
    if !common::backend_selected(engine) {
        return;
    }
    let dir = Scratch::new();
    dir.write(
        "nl.toml",
        "[defaults]\nlang = \"python\"\n\n[[jobs]]\nname = \"a\"\ncode = '''\nimport socket\nprint('id=' + open('/proc/1/stat').read().split()[21])\nfor _ in range(20):\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()\n'''\n\n[[jobs]]\nname = \"b\"\ncode = \"print('id=' + open('/proc/1/stat').read().split()[21])\"\n",
    );
    let run = dir.run_json(&["-j", "1", "--backend", engine, "nl.toml"]);
    let a = common::field(run.assert_status("a", "passed"), "stdout").to_string();
    let b = common::field(run.assert_status("b", "passed"), "stdout").to_string();
    // Else the job that closed netlink sockets cost its container.
    assert_same_container(engine, &a, &b);
}

/// Interactive cases (README, "Test cases") run through the warm containers' agent (pid 1
/// says so), which streams the run step and proves the container clean after each case:
/// with `-j 1` every case reuses the first one's container (the same pid 1) and finds
/// nothing of it. The program answers with what an earlier case left in `/tmp` when it
/// finds it (the first case's number, wrong for the others), and the interactor floods the
/// program's stdin after the answer, while and after the program ends: what the agent did
/// not pass on must not stay in its input, where the next case would read it as its request.
const INTERACTIVE: &str = r#"
[[jobs]]
name = "interactive"
lang = "python"
timeout = "20s"
limits.output = "4MiB"
cases = [{ name = "one", stdin = "1" }, { name = "two", stdin = "2" }, { name = "three", stdin = "3" }]
cases_stop = "never"
code = """
import os
want = input().split()[1]
left = "/tmp/left"
print(open(left).read() if os.path.exists(left) else want, flush=True)
open(left, "w").write(want)
pid1 = open("/proc/1/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
print("id=" + open("/proc/1/stat").read().split()[21], pid1, flush=True)
"""
interactor = { lang = "c", code = """
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    long want, got; char id[64], pid1[256];
    FILE *in = fopen(argv[1], "r");
    if (!in || fscanf(in, "%ld", &want) != 1) return 3;
    printf("go %ld\\n", want); fflush(stdout);
    if (scanf("%ld %63s %255[^\\n]", &got, id, pid1) != 3) { fprintf(stderr, "no answer"); return 1; }
    fprintf(stderr, "%s pid1=%s", id, pid1);
    if (got != want) { fprintf(stderr, ": got %ld, want %ld", got, want); return 1; }
    static char junk[1 << 16];
    memset(junk, 'x', sizeof junk);
    for (int i = 0; i < 16; i++) fwrite(junk, 1, sizeof junk, stdout);
    fflush(stdout);
    return 0;
}
""" }
"#;

#[test]
fn docker_interactive_cases_reuse_clean_containers() {
    interactive_cases_reuse_clean_containers("docker");
}

#[test]
fn podman_interactive_cases_reuse_clean_containers() {
    interactive_cases_reuse_clean_containers("podman");
}

fn interactive_cases_reuse_clean_containers(engine: &str) {
    if !common::backend_selected(engine) {
        return;
    }
    let dir = Scratch::new();
    dir.write("interactive.toml", INTERACTIVE);
    let run = dir.run_json(&["-j", "1", "--backend", engine, "interactive.toml"]);
    let job = run.assert_status("interactive", "passed");
    let said: Vec<String> = job["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checks"].to_string())
        .collect();
    assert_eq!(said.len(), 3, "{job:#}");
    let id = |s: &str| {
        s.split("the interactor accepted: ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .unwrap_or("")
            .to_string()
    };
    for s in &said {
        assert!(id(s).starts_with("id="), "{said:?}");
        assert_eq!(
            id(s),
            id(&said[0]),
            "{engine}: the cases ran in one warm container: {said:?}"
        );
        assert!(
            s.contains("pid1=/.llm-sandbox/agent __agent"),
            "{engine}: the case did not run through the agent: {s}"
        );
    }
}
