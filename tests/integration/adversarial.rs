//! The adversarial suite: hostile programs, each contained, reported with the right status,
//! and the runner goes on with the next job. Written once, run against every backend of
//! [`common::backends()`] (native, and each container engine that is available; see
//! tests/integration/common/mod.rs).
//!
//! Every case runs through the CLI with a secret in the runner's environment and a TCP
//! listener on 127.0.0.1 that must never be reached.

use crate::common;

use common::{backends, bin, status, text, Scratch};
use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "s3cr3t-value-that-must-not-leak";

struct Listener {
    port: u16,
    hit: Arc<AtomicBool>,
}

fn listener() -> Listener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let hit = Arc::new(AtomicBool::new(false));
    let h = hit.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if l.accept().is_ok() {
                h.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    Listener { port, hit }
}

/// Runs `yaml` (a job file) on `backend` in `dir`; returns the exit code and the JSON
/// report's jobs by name.
fn run(
    backend: &str,
    yaml: &str,
    dir: &Scratch,
) -> (i32, std::collections::HashMap<String, Value>) {
    dir.write("adv.yaml", yaml);
    let r = common::run_report(
        dir.cmd()
            .args(["run", "--no-progress", "-j", "2", "--backend", backend])
            .args(["--json", "-", "--artifacts"])
            .arg(dir.path().join("artifacts"))
            .arg("adv.yaml")
            .env("LLM_SANDBOX_TEST_SECRET", SECRET),
    );
    (r.code, r.jobs())
}

fn cases(port: u16) -> String {
    format!(
        r#"
defaults:
  timeout: 10s
  limits: {{ memory: 256MiB, pids: 64, output: 64KiB, disk: 16MiB }}
jobs:
  - name: fork-bomb
    lang: bash
    timeout: 5s
    code: |
      bomb() {{ bomb | bomb & }}; bomb; sleep 2; echo survived
  - name: thread-bomb
    lang: python
    timeout: 5s
    code: |
      import threading, time
      n = 0
      try:
          while True:
              threading.Thread(target=time.sleep, args=(3,), daemon=True).start(); n += 1
      except RuntimeError as e:
          print("thread limit after", n)
  - name: memory-bomb
    lang: python
    code: |
      x = []
      while True: x.append(bytearray(16 * 1024 * 1024))
  - name: stdout-flood
    lang: python
    code: |
      import sys
      b = b"x" * (1 << 20)
      for _ in range(1024): sys.stdout.buffer.write(b)
  - name: stderr-flood
    lang: python
    code: |
      import sys
      b = b"e" * (1 << 20)
      for _ in range(1024): sys.stderr.buffer.write(b)
  - name: disk-fill
    lang: bash
    code: |
      dd if=/dev/zero of=/sandbox/big bs=1M count=100 2>/dev/null; echo "rc=$? size=$(stat -c %s /sandbox/big)"
      rm -f /sandbox/big
      dd if=/dev/zero of=/tmp/big bs=1M count=100 2>/dev/null; echo "tmp rc=$? size=$(stat -c %s /tmp/big)"
      echo x > /dev/null && echo devnull-ok
  - name: inode-fill
    lang: python
    code: |
      n = 0
      try:
          while n < 10**6:
              open(f"/sandbox/f{{n}}", "w").close(); n += 1
      except OSError as e:
          print("inodes stopped at", n)
  - name: write-outside
    lang: bash
    code: |
      for p in /etc/x /usr/x /x /bin/x /proc/x; do echo hi > $p 2>/dev/null && echo "WROTE $p"; done
      ln -s /etc/hostname /sandbox/link; echo hi > /sandbox/link 2>/dev/null && echo "WROTE through symlink"
      ln /etc/hostname /sandbox/hard 2>/dev/null && echo "HARDLINKED"
      echo done
  - name: read-secrets
    lang: bash
    code: |
      cat /etc/shadow /etc/gshadow 2>/dev/null && echo "READ shadow"
      ls /root /home 2>/dev/null && echo "SAW home"
      cat /proc/*/environ 2>/dev/null | tr '\0' '\n'
      env
      ls /var/run/docker.sock /run/docker.sock /run/podman/podman.sock 2>/dev/null && echo "SAW socket"
      echo done
  - name: network
    lang: python
    code: |
      import socket, os
      print("interfaces:", sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else open("/proc/net/dev").read())
      s = socket.socket(); s.settimeout(2)
      try:
          s.connect(("127.0.0.1", {port})); print("CONNECTED")
      except OSError as e:
          print("refused", e)
  - name: mount-and-ptrace
    lang: python
    code: |
      import ctypes
      libc = ctypes.CDLL(None, use_errno=True)
      print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
      print("ptrace", libc.ptrace(16, 1, 0, 0))
      print("unshare", libc.unshare(0x10000000))
  - name: kill-all
    lang: bash
    code: |
      kill -9 -1; echo after
  - name: daemon
    lang: bash
    code: |
      (setsid sleep 1000 &); nohup sleep 1001 >/dev/null 2>&1 &
      echo x > /tmp/left-behind; echo y > /dev/shm/left-behind; echo started
  - name: zombie
    lang: python
    code: |
      import os
      for _ in range(20):
          if os.fork() == 0: os._exit(0)
      print("zombies made")
  - name: include-shadow
    lang: c
    code: |
      #include "/etc/shadow"
      int main(void) {{ return 0; }}
  - name: symlink-artifacts
    lang: bash
    artifacts: ["*.txt"]
    code: |
      ln -s /etc/hostname host.txt; ln -s / root.txt; echo ok > real.txt
  - name: busy-timeout
    lang: python
    timeout: 1s
    code: |
      while True: pass
  - name: sleep-timeout
    lang: bash
    timeout: 1s
    code: |
      sleep 100
  - name: after-all
    lang: bash
    code: |
      ls -A /tmp /dev/shm; ps -eo pid,comm --no-headers | grep -v -e ps -e bash -e grep -e __sandbox -e 'exe$' || true; echo clean
"#
    )
}

#[test]
fn adversarial_suite() {
    for backend in backends() {
        let l = listener();
        let dir = Scratch::new();
        let (code, jobs) = run(backend, &cases(l.port), &dir);
        assert_eq!(code, 1, "{backend}: some cases fail by design");
        let get = |n: &str| {
            jobs.get(n)
                .unwrap_or_else(|| panic!("{backend}: job {n} missing from the report"))
        };
        // Nothing of the runner's environment, host secrets or host processes is visible.
        for (name, j) in &jobs {
            assert!(
                !text(j).contains(SECRET),
                "{backend}/{name}: the runner's secret leaked: {}",
                text(j)
            );
        }
        let j = get("fork-bomb");
        assert!(
            matches!(status(j), "passed" | "failed" | "timeout"),
            "{backend}: fork-bomb {j}"
        );
        let j = get("thread-bomb");
        assert!(
            text(j).contains("thread limit after") || status(j) == "timeout",
            "{backend}: thread-bomb {j}"
        );
        let j = get("memory-bomb");
        assert_eq!(status(j), "failed", "{backend}: {j}");
        assert!(
            text(j).contains("memory limit"),
            "{backend}: memory-bomb message: {j}"
        );
        for flood in ["stdout-flood", "stderr-flood"] {
            let j = get(flood);
            assert_eq!(status(j), "failed", "{backend}: {j}");
            assert!(text(j).contains("output limit"), "{backend}: {flood}: {j}");
            let stream = if flood == "stdout-flood" {
                "stdout"
            } else {
                "stderr"
            };
            assert!(
                j[stream].as_str().unwrap().len() <= 64 * 1024,
                "{backend}: {flood} kept more than the cap"
            );
            assert_eq!(
                j[format!("{stream}_truncated")],
                Value::Bool(true),
                "{backend}: {flood}"
            );
        }
        let j = get("disk-fill");
        assert_eq!(status(j), "passed", "{j}");
        let out = j["stdout"].as_str().unwrap();
        assert!(
            out.contains("devnull-ok"),
            "{backend}: /dev/null is not writable: {j}"
        );
        let sizes: Vec<u64> = out
            .lines()
            .filter_map(|l| l.split("size=").nth(1))
            .map(|n| n.trim().parse().unwrap())
            .collect();
        assert_eq!(sizes.len(), 2, "{backend}: {out}");
        for size in sizes {
            // dd ran (wrote something) and stopped at the 16MiB disk limit.
            assert!(
                size > 1 << 20 && size <= 16 << 20,
                "{backend}: the disk limit did not hold: {out}"
            );
        }
        assert!(
            !out.contains("rc=0"),
            "{backend}: dd did not fail at the limit: {out}"
        );
        let j = get("inode-fill");
        assert!(
            text(j).contains("inodes stopped at"),
            "{backend}: inode limit: {j}"
        );
        let j = get("write-outside");
        assert!(
            text(j).contains("done")
                && !text(j).contains("WROTE")
                && !text(j).contains("HARDLINKED"),
            "{backend}: {j}"
        );
        let j = get("read-secrets");
        let t = text(j);
        assert!(
            t.contains("done")
                && !t.contains("READ shadow")
                && !t.contains("SAW home")
                && !t.contains("SAW socket"),
            "{backend}: {t}"
        );
        let j = get("network");
        assert!(
            !text(j).contains("CONNECTED"),
            "{backend}: the sandbox reached the host's loopback: {j}"
        );
        assert!(
            !text(j).contains("eth"),
            "{backend}: the sandbox sees a network interface: {j}"
        );
        let j = get("mount-and-ptrace");
        assert!(
            text(j).contains("mount -1")
                && text(j).contains("ptrace -1")
                && text(j).contains("unshare -1"),
            "{backend}: {j}"
        );
        let j = get("kill-all");
        assert!(
            matches!(status(j), "passed" | "failed"),
            "{backend}: kill-all {j}"
        );
        assert_eq!(status(get("daemon")), "passed", "{backend}");
        assert_eq!(status(get("zombie")), "passed", "{backend}");
        let j = get("include-shadow");
        assert_eq!(status(j), "failed", "{backend}: {j}");
        assert_eq!(j["phase"], "compile");
        let j = get("symlink-artifacts");
        let arts: Vec<&str> = j["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            arts.len(),
            1,
            "{backend}: only the regular file is copied: {arts:?}"
        );
        assert!(arts[0].ends_with("real.txt"));
        let host_copy = dir.path().join("artifacts/symlink-artifacts");
        for entry in std::fs::read_dir(&host_copy).unwrap() {
            let m = std::fs::symlink_metadata(entry.unwrap().path()).unwrap();
            assert!(m.is_file(), "{backend}: an artifact is not a regular file");
        }
        for t in ["busy-timeout", "sleep-timeout"] {
            let j = get(t);
            assert_eq!(status(j), "timeout", "{backend}: {j}");
            assert!(
                j["duration_ms"].as_u64().unwrap() < 6000,
                "{backend}: {t} took too long: {j}"
            );
        }
        // Nothing of an earlier job survives into a later one.
        let j = get("after-all");
        let out = j["stdout"].as_str().unwrap();
        assert!(
            out.contains("clean") && !out.contains("left-behind") && !out.contains("sleep"),
            "{backend}: {out}"
        );
        assert!(
            !l.hit.load(Ordering::SeqCst),
            "{backend}: the host's loopback listener was reached"
        );
        // No process of the run survives it.
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        assert!(
            !ps.contains("sleep 1000") && !ps.contains("sleep 1001"),
            "{backend}: a daemon outlived its job:\n{ps}"
        );
    }
}

fn long_job(dir: &Path, tag: u32) -> std::path::PathBuf {
    let f = dir.join("long.toml");
    std::fs::write(
        &f,
        r#"
[[jobs]]
name = "quick"
lang = "bash"
code = "echo done"

[[jobs]]
name = "long"
lang = "bash"
timeout = "5m"
code = "sleep TAG1 & sleep TAG2"
"#
        .replace("TAG1", &tag.to_string())
        .replace("TAG2", &(tag + 1).to_string()),
    )
    .unwrap();
    f
}

fn sleepers(tag: u32) -> bool {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let want = format!("sleep {tag}");
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .any(|l| l.starts_with(&want))
}

fn wait_for_sleepers(tag: u32, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if sleepers(tag) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sigint_tears_down_and_writes_partial_reports() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let f = long_job(dir.path(), 4242);
        let json = dir.path().join("r.json");
        let junit = dir.path().join("r.xml");
        // -j 1: jobs start in plan order, so `quick` has finished when `long` sleeps (a
        // container backend takes long enough to start `quick` for the race to matter).
        let mut child = bin()
            .args([
                "run",
                "--no-progress",
                "-j",
                "1",
                "--backend",
                backend,
                "--json",
            ])
            .arg(&json)
            .arg("--junit")
            .arg(&junit)
            .arg(&f)
            .spawn()
            .unwrap();
        assert!(
            wait_for_sleepers(4242, true),
            "{backend}: the long job never started"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let t0 = Instant::now();
        let status = child.wait().unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{backend}: Ctrl-C took {:?}",
            t0.elapsed()
        );
        assert_eq!(status.code(), Some(130), "{backend}");
        assert!(
            wait_for_sleepers(4242, false),
            "{backend}: the job's processes survived Ctrl-C"
        );
        let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let jobs = r["jobs"].as_array().unwrap();
        let quick = jobs.iter().find(|j| j["name"] == "quick").unwrap();
        assert_eq!(
            quick["status"], "passed",
            "{backend}: the finished job is reported"
        );
        let mut s = String::new();
        std::fs::File::open(&junit)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert!(s.contains("<testsuites"), "{backend}: JUnit written");
    }
}

#[test]
fn sigkill_of_the_runner_leaves_nothing_running() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let f = long_job(dir.path(), 4252);
        let mut child = bin()
            .args(["run", "--no-progress", "--backend", backend])
            .arg(&f)
            .spawn()
            .unwrap();
        assert!(
            wait_for_sleepers(4252, true),
            "{backend}: the long job never started"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            wait_for_sleepers(4252, false),
            "{backend}: the sandbox outlived a SIGKILLed runner"
        );
        // The next run removes what the killed run left (its temporary directory).
        let out = bin()
            .args([
                "run",
                "--no-progress",
                "--filter",
                "quick",
                "--backend",
                backend,
            ])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let leftovers: Vec<_> = std::fs::read_dir(llm_sandbox::owner::runs_root_path())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let killed = format!("ls-{}-", child.id());
        assert!(
            !leftovers.iter().any(|n| n.starts_with(&killed)),
            "{backend}: left behind: {leftovers:?}"
        );
        if common::ENGINES.contains(&backend) {
            for what in ["container", "volume"] {
                let left: Vec<_> = common::engine_objects(backend, what)
                    .into_iter()
                    .filter(|o| o.1.starts_with(&killed))
                    .collect();
                assert!(
                    left.is_empty(),
                    "{backend}: the killed run's {what}s are still there: {left:?}"
                );
            }
        }
    }
}

/// The native sandbox as an ordinary user (no cgroups: rlimits enforce the limits).
#[test]
fn native_works_for_an_ordinary_user() {
    if !nix::unistd::geteuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        common::skipped(
            "native_works_for_an_ordinary_user: needs root (to become another user) and setpriv",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let f = dir.path().join("user.yaml");
    std::fs::write(
        &f,
        r#"
jobs:
  - name: who
    lang: bash
    code: |
      id -u; cat /etc/shadow 2>/dev/null || echo no-shadow
    expect: { stdout: "1000\nno-shadow" }
  - name: memory
    lang: python
    limits: { memory: 128MiB }
    code: |
      x = bytearray(1 << 30)
"#,
    )
    .unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::BIN)
        .args(["run", "--no-progress", "--json", "-"])
        .arg(&f)
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let jobs = report["jobs"].as_array().unwrap();
    let who = jobs.iter().find(|j| j["name"] == "who").unwrap();
    assert_eq!(who["status"], "passed", "{who}");
    let mem = jobs.iter().find(|j| j["name"] == "memory").unwrap();
    assert_eq!(mem["status"], "failed", "{mem}");
    assert!(
        mem["message"].as_str().unwrap_or("").contains("memory"),
        "{mem}"
    );
}

/// One job after another in the same concurrency slot (`-j 1`): a listener a job leaves on
/// the sandbox's loopback is gone for the next one (every native sandbox has a network
/// namespace of its own; a warm container's jobs end with every process killed).
#[test]
fn network_state_does_not_outlive_a_job() {
    let l = listener();
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = String::from(
            r#"
defaults:
  timeout: 10s
jobs:
  - name: leave-listener
    lang: python
    code: |
      import os, socket, time
      s = socket.socket(); s.bind(("127.0.0.1", 47613)); s.listen()
      if os.fork() == 0:
          os.setsid()
          if os.fork() == 0:
              while True: s.accept()[0].close()
          os._exit(0)
      c = socket.create_connection(("127.0.0.1", 47613), timeout=2); print("listening")
  - name: next-job
    lang: python
    code: |
      import socket
      try:
          socket.create_connection(("127.0.0.1", 47613), timeout=2); print("reached")
      except OSError as e:
          print("refused")
"#,
        );
        let r = common::run_one_slot(backend, &yaml, &dir, &[]);
        let jobs = r.jobs();
        let out = |n: &str| -> String {
            let j = &jobs[n];
            assert_eq!(status(j), "passed", "{backend} {n}: {j}");
            common::field(j, "stdout").trim().to_string()
        };
        assert_eq!(out("leave-listener"), "listening", "{backend}");
        assert_eq!(
            out("next-job"),
            "refused",
            "{backend}: a listener outlived its job"
        );
        assert!(!l.hit.load(Ordering::SeqCst));
    }
}

/// One job after another in the same slot (`-j 1`): whatever a job tries on the root that
/// sandboxes share read-only (a native server builds it once and every warm sandbox starts
/// from a copy of it; a warm container keeps its image's root), the next job finds that
/// root as the job before the attack did.
#[test]
fn the_shared_root_is_the_same_for_every_job() {
    // Names, owners, modes, sizes and link counts of the root, /etc and /dev (not /proc's
    // link count: the number of processes), and the contents of /etc's files that exist:
    // what a later job could read. On native also their access and change times, first
    // (before this job reads anything): a read that updated one would tell the next job
    // what this one read. (A warm container's /dev is Docker's own tmpfs, whose access time
    // a read does update: named among the known limits in the README, *Security*.)
    let listing = "ls -lAn --time-style=+ / /etc /dev | grep -v ' proc$' | md5sum; cat /etc/hostname /etc/passwd /etc/hosts 2>/dev/null | md5sum";
    let times = "stat -c '%n %a %u %X %Y %Z' / /etc /dev /etc/passwd";
    for backend in backends() {
        let fingerprint = if backend == "native" {
            format!("{times}; {listing}")
        } else {
            listing.to_string()
        };
        let dir = Scratch::new();
        let yaml = format!(
            r#"
defaults:
  timeout: 10s
  lang: bash
jobs:
  - name: before
    code: "{fingerprint}"
  - name: attack
    code: |
      try() {{ "$@" 2>/dev/null && echo "CHANGED: $*"; }}
      for p in /x /etc/x /dev/x /usr/x /sandbox/../x; do try touch "$p"; done
      try mkdir /y; try mkdir /etc/y; try mkdir /dev/y
      try chmod 777 /; try chmod 777 /etc; try chmod 777 /dev
      try mv /etc/hostname /etc/h2; try rm -f /etc/hosts; try ln -s / /etc/l
      try sh -c 'echo x >> /etc/passwd'; try sh -c 'echo x > /etc/hostname'
      try touch -d 2001-01-01 /etc /dev /
      try mount -o remount,rw /; try mount -t tmpfs none /etc
      cat /etc/passwd /etc/hosts > /dev/null; ls -R /etc /dev > /dev/null 2>&1
      python3 -c 'import os; os.chmod("/etc", 0o777)' 2>/dev/null && echo "CHANGED: chmod via python"
      echo done
  - name: after
    code: "{fingerprint}"
"#
        );
        let r = common::run_one_slot(backend, &yaml, &dir, &[]);
        let jobs = r.jobs();
        let out = |n: &str| -> String {
            let j = &jobs[n];
            assert_eq!(status(j), "passed", "{backend} {n}: {j}");
            common::field(j, "stdout").trim().to_string()
        };
        let attack = out("attack");
        assert!(attack.ends_with("done"), "{backend}: {attack}");
        assert!(
            !attack.contains("CHANGED"),
            "{backend}: a job changed the shared root:\n{attack}"
        );
        assert_eq!(
            out("before"),
            out("after"),
            "{backend}: the root the next job saw differs"
        );
    }
}

/// A native sandbox is never in the host's network namespace. As root, the sandboxes of a
/// slot share one (src/sandbox/slotnet.rs) for as long as no job changes anything in it
/// (job b's routing netlink sockets, closed as it ends and freed by the kernel only after an
/// RCU grace period, are no change): after a job that used the network the next job gets a
/// new one. Otherwise each sandbox has its own.
#[test]
fn native_network_namespace_per_sandbox() {
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host = host.to_string_lossy();
    let dir = Scratch::new();
    let ns = "readlink /proc/self/ns/net";
    dir.write(
        "ns.yaml",
        &format!(
            "jobs:\n  - {{ name: a, lang: bash, code: '{ns}' }}\n  - {{ name: b, lang: python, code: \"import os, socket\\nfor _ in range(20):\\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()\\nprint(os.readlink('/proc/self/ns/net'))\" }}\n  - {{ name: c, lang: python, code: \"import os, socket\\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))\\nprint(os.readlink('/proc/self/ns/net'))\" }}\n  - {{ name: d, lang: bash, code: '{ns}' }}\n"
        ),
    );
    let r = common::run_report(
        dir.cmd()
            .args(["run", "--no-progress", "-j", "1", "--backend", "native"])
            .args(["--json", "-", "ns.yaml"]),
    );
    let jobs = r.jobs();
    let ns = |n: &str| common::field(&jobs[n], "stdout").trim().to_string();
    let (a, b, c, d) = (ns("a"), ns("b"), ns("c"), ns("d"));
    for n in [&a, &b, &c, &d] {
        assert!(n.starts_with("net:["), "{a} {b} {c} {d}");
        assert_ne!(n, &host, "a sandbox is in the host's network namespace");
    }
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            a, b,
            "the slot's namespace was replaced after a job that left it as it was"
        );
        assert_eq!(
            b, c,
            "the slot's namespace was replaced after a job that left it as it was"
        );
    } else {
        assert_ne!(a, b, "two sandboxes shared a network namespace");
    }
    assert_ne!(
        c, d,
        "a job got the namespace of a job that sent a packet in it"
    );
}

/// What a job can leave in its network namespace without a socket outliving it, each
/// followed by a job that looks for it (`-j 1`: one slot, whose sandboxes share their
/// namespace as root): a flow label lingering after its socket, the counters of a send that
/// found no route, the IPv6 route cache of a UDP `connect` (no packet sent), a unix socket
/// kept alive in flight by a reference cycle (with its abstract name), a listener, a
/// TIME_WAIT. Each attack shows that it changed what the namespace shows; each next job sees
/// what the first job of the run saw.
#[test]
fn no_network_state_reaches_the_next_native_job() {
    no_network_state_reaches_the_next_job("native", &[]);
}

/// The same in warm containers (`-j 1`: one container while it is proven clean), less the
/// IPv6 attacks (Docker's containers without network have no IPv6 loopback).
#[test]
fn no_network_state_reaches_the_next_docker_job() {
    no_network_state_reaches_the_next_job("docker", &["flowlabel", "route-cache"]);
}

#[test]
fn no_network_state_reaches_the_next_podman_job() {
    no_network_state_reaches_the_next_job("podman", &["flowlabel", "route-cache"]);
}

fn no_network_state_reaches_the_next_job(backend: &str, not_here: &[&str]) {
    if !common::backend_selected(backend) {
        return;
    }
    // What a job sees of its namespace (the per-namespace files the slot's check compares,
    // less the figures of the whole machine), as one line of digests.
    const LOOK: &str = r#"
def look():
    import hashlib, re
    out = []
    for f in ["ip6_flowlabel", "snmp", "snmp6", "netstat", "ipv6_route", "rt6_stats", "unix", "sockstat", "sockstat6", "dev"]:
        t = open("/proc/net/" + f).read()
        if f == "sockstat":
            t = re.sub(r"(orphan|alloc|mem) \d+", "", t)
        out.append(f + "=" + hashlib.sha256(t.encode()).hexdigest()[:12])
    return " ".join(out)
"#;
    let attacks: &[(&str, &str)] = &[
        (
            "flowlabel",
            "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\nreq = socket.inet_pton(socket.AF_INET6, '::1') + struct.pack('!I', 0x12345) + struct.pack('=BBHHHI', 0, 1, 1, 0, 60, 0)\ns.setsockopt(socket.IPPROTO_IPV6, 32, req)\ns.close()",
        ),
        (
            "no-route",
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n    u.sendto(b'x', ('10.9.9.9', 9))\nexcept OSError:\n    pass\nu.close()",
        ),
        (
            "route-cache",
            "u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\nu.connect(('::1', 9))\nu.close()",
        ),
        (
            "unix-cycle",
            "import array\nx, y = socket.socketpair()\nz = socket.socket(socket.AF_UNIX)\nz.bind('\\0llm-sandbox-cycle')\nx.sendmsg([b'a'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [x.fileno(), y.fileno(), z.fileno()]))])",
        ),
        (
            "listener",
            "s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 47623))\ns.listen()",
        ),
        (
            "time-wait",
            "s = socket.socket(); s.bind(('127.0.0.1', 47624)); s.listen()\nc = socket.create_connection(('127.0.0.1', 47624))\nconn, _ = s.accept(); conn.close(); c.recv(1); c.close(); s.close()",
        ),
    ];
    let job = |name: &str, body: &str| {
        let code = format!("import os, socket, struct\n{LOOK}\n{body}\n");
        format!(
            "  - name: {name}\n    lang: python\n    code: {}\n",
            serde_json::to_string(&code).unwrap()
        )
    };
    let mut seen = Vec::new();
    // One run (one sandbox server) per attack: what one attack leaves cannot hide another's.
    for (name, attack) in attacks.iter().filter(|(n, _)| !not_here.contains(n)) {
        let yaml = format!(
            "jobs:\n{}{}{}",
            job("first", "print(look())"),
            job(
                name,
                &format!("before = look()\n{attack}\nprint('changed' if look() != before else 'UNCHANGED')"),
            ),
            job(
                "after",
                "import socket\ntry:\n    socket.socket(socket.AF_UNIX).bind('\\0llm-sandbox-cycle')\nexcept OSError:\n    print('ABSTRACT NAME TAKEN')\nprint(look())",
            )
        );
        let dir = Scratch::new();
        let r = common::run_one_slot(backend, &yaml, &dir, &[]);
        let out = |n: &str| {
            common::field(r.assert_status(n, "passed"), "stdout")
                .trim()
                .to_string()
        };
        assert_eq!(
            out(name),
            "changed",
            "the attack {name} changed nothing it could be seen by"
        );
        let (first, after) = (out("first"), out("after"));
        if after != first {
            seen.push(format!(
                "{backend}, after {name}: {after}\n  a fresh namespace: {first}"
            ));
        }
    }
    assert!(
        seen.is_empty(),
        "jobs saw what an earlier job left in the network namespace:\n{}",
        seen.join("\n")
    );
}
