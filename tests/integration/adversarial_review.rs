//! The holes two adversarial reviews found (README, "Security"), each attacked as the
//! reviewers did, on every backend of [`common::backends()`] where it applies (native,
//! docker, podman). Container cases run with `-j 1`, so that a warm container serves one
//! job after another: what one job leaves must never decide a later job's verdict.

use crate::common;

use common::{backends, field, run_one_slot, status, text, Scratch};
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Runs `yaml` on `backend` with `-j 1` (one slot: consecutive jobs share a warm container
/// or a sandbox server) and returns the run.
fn containers() -> Vec<&'static str> {
    backends().into_iter().filter(|b| *b != "native").collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const HELLO: &str =
    "jobs:\n  - { name: hello, lang: bash, code: 'echo hi', expect: { stdout: hi } }\n";

/// Review item 1: The runner's private directory: never in a shared, predictable place it does not own.
/// As root, `$TMPDIR/llm-sandbox-0` planted by another user (owned by them, or a symlink to
/// a victim directory) is neither written into nor followed; a private directory that is
/// not private (`LLM_SANDBOX_RUNTIME_DIR`) is refused with a message that names it.
#[test]
fn the_private_directory_is_never_another_users() {
    if !nix::unistd::geteuid().is_root() {
        common::skipped("the_private_directory_is_never_another_users: needs root (to plant directories of another uid)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // What an attacker prepares in a shared TMPDIR.
    let foreign_tmp = t.path().join("tmp-foreign");
    let planted = foreign_tmp.join("llm-sandbox-0");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("marker"), "attacker").unwrap();
    std::os::unix::fs::chown(&planted, Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(&foreign_tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let link_tmp = t.path().join("tmp-link");
    let victim = t.path().join("victim");
    std::fs::create_dir_all(&link_tmp).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, link_tmp.join("llm-sandbox-0")).unwrap();
    for tmp in [&foreign_tmp, &link_tmp] {
        let dir = Scratch::new();
        dir.write("jobs.yaml", HELLO);
        let r = common::run_report(
            dir.cmd()
                .args(["run", "--no-progress", "--json", "-", "jobs.yaml"])
                .env("TMPDIR", tmp)
                .env_remove("LLM_SANDBOX_RUNTIME_DIR"),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.assert_status("hello", "passed");
    }
    assert_eq!(
        entries(&planted),
        ["marker"],
        "the run wrote into the planted directory"
    );
    assert!(
        entries(&victim).is_empty(),
        "the run followed the planted symlink"
    );

    // An explicit private directory that another user owns, or that is a symlink: refused.
    for (dir_path, says) in [
        (planted.clone(), "belongs to uid 4321"),
        (link_tmp.join("llm-sandbox-0"), "symbolic link"),
    ] {
        let dir = Scratch::new();
        dir.write("jobs.yaml", HELLO);
        let out = dir
            .cmd()
            .args(["run", "--no-progress", "jobs.yaml"])
            .env("LLM_SANDBOX_RUNTIME_DIR", &dir_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains(says) && stderr.contains(&dir_path.display().to_string()),
            "the refusal names the directory and why: {stderr}"
        );
    }
    assert_eq!(entries(&planted), ["marker"]);
    assert!(entries(&victim).is_empty());
}

/// Review item 2: A warm container's `/sandbox` keeps no metadata: a default ACL (later files
/// read-only) and a `user.*` attribute set by one job are not seen by the next.
#[test]
fn a_default_acl_or_xattr_does_not_reach_the_next_job() {
    for backend in containers() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: plant
    lang: python
    code: |
      import os, struct
      # A default ACL that makes every file created in /sandbox read-only (r--).
      acl = struct.pack("<I", 2) + b"".join(
          struct.pack("<HHI", tag, 4, 0xFFFFFFFF) for tag in (0x01, 0x04, 0x20))
      for name, value in [("system.posix_acl_default", acl), ("user.answer", b"42")]:
          try:
              os.setxattr("/sandbox", name, value); print("set", name)
          except OSError as e:
              print("refused", name, e.errno)
  - name: victim
    lang: python
    code: |
      import os
      with open("/sandbox/new.txt", "w") as f: f.write("1")
      with open("/sandbox/new.txt", "a") as f: f.write("2")
      print(sorted(os.listxattr("/sandbox")), oct(os.stat("/sandbox").st_mode & 0o7777))
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        let plant = r.job("plant");
        assert!(
            field(plant, "stdout").contains("set user.answer"),
            "{backend}: the attack did not take place, the test proves nothing: {plant}"
        );
        let v = r.assert_status("victim", "passed");
        assert_eq!(
            field(v, "stdout").trim(),
            "[] 0o755",
            "{backend}: the next job saw the earlier one's metadata: {v}"
        );
    }
}

/// Review items 3 and 16: Socket families by allow-list (no `AF_VSOCK`, `AF_PACKET`, `AF_ALG`, netlink
/// other than routing), no `io_uring`, no `ptrace(PTRACE_TRACEME)`: on every backend.
#[test]
fn socket_families_and_kernel_interfaces_are_refused() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: probe
    lang: python
    code: |
      import ctypes, socket
      libc = ctypes.CDLL(None, use_errno=True)
      def sock(family, type_, proto=0):
          fd = libc.socket(family, type_, proto)
          return "ok" if fd >= 0 else "errno%d" % ctypes.get_errno()
      print("unix", sock(1, 1))
      print("inet", sock(2, 1))
      print("inet6", sock(10, 1))
      print("netlink-route", sock(16, 3, 0))
      print("netlink-audit", sock(16, 3, 9))
      print("vsock", sock(40, 1))
      print("packet", sock(17, 3))
      print("alg", sock(38, 5))
      print("pair-vsock", "ok" if libc.socketpair(40, 1, 0, (ctypes.c_int * 2)()) == 0 else "errno%d" % ctypes.get_errno())
      params = (ctypes.c_byte * 120)()
      r = libc.syscall(425, 4, params)
      print("io_uring", "ok" if r >= 0 else "errno%d" % ctypes.get_errno())
      r = libc.ptrace(0, 0, 0, 0)
      print("traceme", "ok" if r == 0 else "errno%d" % ctypes.get_errno())
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        let j = r.assert_status("probe", "passed");
        let got: HashMap<&str, &str> = field(j, "stdout")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .collect();
        for allowed in ["unix", "inet", "inet6", "netlink-route"] {
            assert_eq!(
                got[allowed], "ok",
                "{backend}: {allowed} was refused: {got:?}"
            );
        }
        for refused in ["netlink-audit", "vsock", "packet", "alg", "pair-vsock"] {
            assert_eq!(
                got[refused], "errno97",
                "{backend}: socket {refused} is not refused with EAFNOSUPPORT: {got:?}"
            );
        }
        assert_ne!(got["io_uring"], "ok", "{backend}: io_uring_setup succeeded");
        assert_ne!(
            got["traceme"], "ok",
            "{backend}: ptrace(PTRACE_TRACEME) succeeded"
        );
    }
}

/// Review items 4 and 17: A job cannot use up a per-user count of the host: holding as many inotify
/// instances as it can leaves the host's processes theirs (a sandbox has a few of its own
/// on native; containers refuse inotify), and container jobs run as a uid no host user has.
#[test]
fn a_job_cannot_use_up_the_hosts_per_user_counts() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: hog
    lang: python
    timeout: 20s
    code: |
      import ctypes, os, time
      libc = ctypes.CDLL(None, use_errno=True)
      n = 0
      while n < 100000 and libc.inotify_init1(0) >= 0:
          n += 1
      print("instances", n, "uid", os.getuid(), flush=True)
      open("/sandbox/holding", "w").close()
      time.sleep(4)
"#;
        dir.write("jobs.yaml", yaml);
        let child = dir
            .cmd()
            .args(["run", "--no-progress", "--backend", backend])
            .args(["--json", "-", "jobs.yaml"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // While the job holds what it could get, this process (the runner's user) still
        // gets an inotify instance.
        std::thread::sleep(Duration::from_millis(2500));
        // SAFETY: inotify_init1 and close on our own fd.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        let host_ok = fd >= 0;
        if host_ok {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
        let out = child.wait_with_output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let j = &report["jobs"][0];
        assert_eq!(status(j), "passed", "{backend}: {j}");
        let words: Vec<&str> = field(j, "stdout").split_whitespace().collect();
        let held: u64 = words[1].parse().unwrap();
        let uid: u32 = words[3].parse().unwrap();
        assert!(
            held <= 16,
            "{backend}: the job held {held} inotify instances"
        );
        assert!(
            host_ok,
            "{backend}: the host's user had no inotify instance left while the job ran"
        );
        if backend != "native" {
            assert_ne!(uid, 1000, "{backend}: container jobs run as uid 1000");
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            assert!(
                !passwd
                    .lines()
                    .any(|l| l.split(':').nth(2) == Some(uid.to_string().as_str())),
                "{backend}: the container uid {uid} is a host user's"
            );
        }
    }
}

/// Review item 5: A tree deeper than any stack: the files to copy out are still copied (never a silent
/// loss), the sandbox's init does not crash.
#[test]
fn deep_directories_do_not_lose_the_jobs_files() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: deep
    lang: python
    artifacts: ["out.txt"]
    expect: { files: { "out.txt": { contains: "hello" } } }
    code: |
      import os
      open("out.txt", "w").write("hello")
      for i in range(3000):
          os.mkdir("d"); os.chdir("d")
      print("nested")
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        let j = r.assert_status("deep", "passed");
        assert_eq!(
            j["artifacts"].as_array().map(Vec::len),
            Some(1),
            "{backend}: {j}"
        );
    }
}

/// Review item 6: Filling the memory-backed `/sandbox` and `/tmp` past the memory limit: the job is the
/// OOM killer's choice (failed, "memory limit exceeded"), never the sandbox's machinery,
/// and the next job of the same slot runs.
#[test]
fn memory_pressure_kills_the_job_not_the_sandbox() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: fill
    lang: python
    limits: { memory: 64MiB, disk: 128MiB }
    code: |
      b = b"x" * (1 << 20)
      for d in ["/sandbox", "/tmp"]:
          try:
              with open(d + "/big", "wb") as f:
                  for _ in range(100): f.write(b)
          except OSError as e:
              print(d, e)
      print("survived")
  - name: after
    lang: python
    limits: { memory: 64MiB, disk: 128MiB }
    code: print("ok")
    expect: { stdout: ok }
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        let j = r.job("fill");
        assert_eq!(status(j), "failed", "{backend}: {j}");
        assert!(
            field(j, "message").contains("memory limit exceeded (64MiB)"),
            "{backend}: {j}"
        );
        r.assert_status("after", "passed");
    }
}

/// In a warm container the next job finds the access and modification times of `/tmp`,
/// `/dev/shm` and `/dev` as the job before the attack did: a job that changes them at a
/// chosen moment (a file made and removed, a read of the engine's strictatime `/dev`) would
/// otherwise leave the next one that moment. (Native jobs get fresh mounts each.)
#[test]
fn a_warm_containers_times_do_not_carry_over() {
    for backend in containers() {
        let dir = Scratch::new();
        let yaml = r#"
defaults:
  lang: bash
jobs:
  - name: before
    code: stat -c '%n %x %y' /tmp /dev/shm /dev
  - name: attack
    code: |
      sleep 0.2; touch /tmp/x; rm /tmp/x; touch /dev/shm/y; rm /dev/shm/y; ls -R /dev > /dev/null 2>&1
      touch -a -d @1234567890 /tmp /dev/shm 2>/dev/null; echo done
  - name: after
    code: stat -c '%n %x %y' /tmp /dev/shm /dev
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        r.assert_status("attack", "passed");
        let before = field(r.job("before"), "stdout").to_string();
        let after = field(r.job("after"), "stdout").to_string();
        assert!(before.contains("/dev/shm"), "{backend}: {before}");
        assert_eq!(
            before, after,
            "{backend}: times carried over to the next job"
        );
    }
}

/// The OOM killer's choice is the job's process (oom_score_adj 1000), never the native
/// sandbox's init (pid 1 of the job's namespace), whether the step execs (it shares the
/// init's memory until its execve, and the kernel keeps a vfork child's score apart) or is a
/// preloaded interpreter's.
#[test]
fn the_oom_killers_choice_is_the_job_not_the_init() {
    let dir = Scratch::new();
    let yaml = r#"
jobs:
  - name: bash
    lang: bash
    code: echo "$(cat /proc/self/oom_score_adj) $(cat /proc/1/oom_score_adj)"
  - name: python
    lang: python
    code: print(open("/proc/self/oom_score_adj").read().strip(), open("/proc/1/oom_score_adj").read().strip())
"#;
    let r = run_one_slot("native", yaml, &dir, &[]);
    for name in ["bash", "python"] {
        let j = r.job(name);
        assert_eq!(status(j), "passed", "{j}");
        let out = field(j, "stdout").trim().to_string();
        let (job, init) = out.split_once(' ').unwrap_or_default();
        assert_eq!(job, "1000", "{name}: {out}");
        assert_ne!(
            init, "1000",
            "{name}: the init became the OOM killer's choice: {out}"
        );
    }
}

/// Review item 7: What the runner keeps of a job is bounded: a job printing megabytes with a wrong
/// `expect.stdout` leaves at most 256 KiB of each stream and 64 KiB of each checked text in
/// the report (the checks saw everything). The runner's memory over 60 such jobs is a
/// benchmark figure (bench/scale).
#[test]
fn the_report_keeps_a_bounded_part_of_big_output() {
    let dir = Scratch::new();
    let yaml = r#"
jobs:
  - name: big
    lang: python
    limits: { output: 4MiB }
    expect: { stdout: "nope" }
    code: |
      import sys
      sys.stdout.write("x" * (3 << 20)); sys.stderr.write("e" * (3 << 20))
"#;
    let r = run_one_slot("native", yaml, &dir, &[]);
    let j = r.assert_status("big", "failed");
    assert_eq!(field(j, "stdout").len(), 256 << 10);
    assert_eq!(field(j, "stderr").len(), 256 << 10);
    assert_eq!(j["stdout_truncated"], true);
    assert_eq!(j["stderr_truncated"], true);
    let c = common::check(j, "stdout");
    assert!(
        c["actual"].as_str().unwrap().len() < (64 << 10) + 100,
        "{c}"
    );
}

/// Review item 8: What a job prints reaches the terminal as text, never as terminal commands: escape
/// sequences, carriage returns and bell are shown escaped; the JSON report keeps the bytes.
#[test]
fn job_output_cannot_command_the_terminal() {
    let dir = Scratch::new();
    dir.write(
        "jobs.yaml",
        r#"
jobs:
  - name: escapes
    lang: python
    expect: { stdout: "clean", exit_code: 0 }
    code: |
      import sys
      evil = "\x1b[2J\x1b]0;title\x07\x1b]52;c;aGVsbG8=\x07\x1b[1A\r   PASS forged\n"
      sys.stdout.write(evil); sys.stderr.write(evil); sys.exit(1)
"#,
    );
    let out = dir
        .cmd()
        .args(["run", "--no-progress", "--json", "report.json", "jobs.yaml"])
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stderr);
    assert!(
        !terminal.contains('\u{1b}') && !terminal.contains('\u{7}') && !terminal.contains('\r'),
        "raw control characters reached the terminal: {terminal:?}"
    );
    assert!(terminal.contains("\\x1b[2J"), "{terminal}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert!(field(&report["jobs"][0], "stdout").contains("\u{1b}]52;c;"));
}

/// Review item 9: No network state of one job is seen by the next: a TIME_WAIT a job leaves on
/// 127.0.0.1 does not keep the next job from binding the port.
#[test]
fn a_time_wait_does_not_reach_the_next_job() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: close-first
    lang: python
    code: |
      import socket
      s = socket.socket(); s.bind(("127.0.0.1", 47619)); s.listen()
      c = socket.create_connection(("127.0.0.1", 47619))
      conn, _ = s.accept()
      conn.close()  # the server side closes first: its port goes to TIME_WAIT
      c.recv(1); c.close(); s.close()
      print("closed")
  - name: bind-again
    lang: python
    code: |
      import socket
      socket.socket().bind(("127.0.0.1", 47619)); print("bound")
    expect: { stdout: bound }
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        r.assert_status("close-first", "passed");
        r.assert_status("bind-again", "passed");
    }
}

/// The host's first non-loopback IPv4 address (the local end of a UDP "connection", which
/// sends nothing).
fn host_address() -> Option<std::net::Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(a) if !a.is_loopback() && !a.is_unspecified() => Some(a),
        _ => None,
    }
}

/// Review item 10: `network = true` on native: the job has a network namespace of its own with
/// user-mode networking (slirp4netns): it reaches the outside (here: the host's external
/// address, as any other machine would), never a service on the host's loopback; without
/// slirp4netns such a job is an error that says how to fix it, never the host's namespace.
#[test]
fn native_network_is_its_own_namespace() {
    let Some(outside) = host_address() else {
        common::skipped(
            "native_network_is_its_own_namespace: this host has no non-loopback IPv4 address",
        );
        return;
    };
    if llm_sandbox::sandbox::usernet::find().is_none() {
        assert!(
            common::strict().is_none(),
            "slirp4netns is required ({}): scripts/test installs it",
            common::strict().unwrap_or_default()
        );
        common::skipped("native_network_is_its_own_namespace: slirp4netns is not installed");
        return;
    }
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let (lp, pp) = (
        loopback.local_addr().unwrap().port(),
        public.local_addr().unwrap().port(),
    );
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let dir = Scratch::new();
    let yaml = format!(
        r#"
jobs:
  - name: net
    lang: python
    network: true
    code: |
      import os, socket
      def reach(addr, port):
          try:
              socket.create_connection((addr, port), timeout=3).close(); return "reached"
          except OSError as e:
              return "refused"
      print("loopback", reach("127.0.0.1", {lp}))
      print("gateway", reach("10.0.2.2", {lp}))
      print("outside", reach("{outside}", {pp}))
      print("ns", os.readlink("/proc/self/ns/net"))
"#
    );
    let r = run_one_slot("native", &yaml, &dir, &[]);
    let j = r.assert_status("net", "passed");
    let got: HashMap<&str, &str> = field(j, "stdout")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(got["loopback"], "refused", "{j}");
    assert_eq!(
        got["gateway"], "refused",
        "the host's loopback through slirp: {j}"
    );
    assert_eq!(got["outside"], "reached", "{j}");
    assert_ne!(
        got["ns"],
        host_ns.to_string_lossy(),
        "the host's network namespace"
    );

    // Without slirp4netns: an error with the fix.
    let dir = Scratch::new();
    dir.write(
        "jobs.yaml",
        "jobs:\n  - { name: net, lang: bash, network: true, code: 'echo hi' }\n",
    );
    let r = common::run_report(
        dir.cmd()
            .args(["run", "--no-progress", "--json", "-", "jobs.yaml"])
            .env(llm_sandbox::sandbox::usernet::PROGRAM_ENV, ""),
    );
    let j = r.assert_status("net", "error");
    assert!(
        field(j, "message").contains("slirp4netns")
            && field(j, "message").contains("apt-get install"),
        "{j}"
    );
}

/// Review items 12 and 14: A process that hides from a name-based search (its name is not UTF-8)
/// survives neither its job nor its own timeout: it cannot rewrite the next job's program
/// to forge a pass, and a hidden main process that spins forever is a `timeout`.
#[test]
fn a_hidden_process_neither_survives_nor_forges_the_next_verdict() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: plant
    lang: python
    code: |
      import ctypes, os, time
      if os.fork() == 0:
          os.setsid()
          ctypes.CDLL(None).prctl(15, b"\xff\xfe", 0, 0, 0)
          end = time.time() + 25
          while time.time() < end:
              try:
                  if "print(5)" in open("/sandbox/main.py").read():
                      open("/sandbox/main.py", "w").write("print(4)\n")
              except OSError:
                  pass
              time.sleep(0.001)
          os._exit(0)
      time.sleep(0.2)
      print("planted")
  - name: wrong
    lang: python
    code: |
      import time; time.sleep(0.5)
      print(5)
    expect: { stdout: "4" }
  - name: hidden-spin
    lang: python
    timeout: 2s
    code: |
      import ctypes
      ctypes.CDLL(None).prctl(15, b"\xff", 0, 0, 0)
      while True: pass
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        r.assert_status("plant", "passed");
        let j = r.assert_status("wrong", "failed");
        assert_eq!(field(j, "stdout").trim(), "5", "{backend}: {j}");
        let j = r.assert_status("hidden-spin", "timeout");
        assert!(
            j["duration_ms"].as_u64().unwrap() < 10_000,
            "{backend}: the timeout took too long: {j}"
        );
    }
}

/// Review items 11 and 13: Preloaded Python: `/proc/self/cmdline`, `environ` and `comm` are the job's
/// own; the interpreter is never initialised from a path a job can write (a `.pth` kept
/// planted in `/sandbox/.local` by a process that tries to outlive its job runs as no one
/// but the job user, and only in a job whose own files hold it, as a fresh python3 would).
#[test]
fn preloaded_python_runs_nothing_a_job_planted_as_root() {
    for backend in backends() {
        let dir = Scratch::new();
        let mut yaml = String::from(
            "backends: { native: { preload: true }, docker: { preload: true }, podman: { preload: true } }\njobs:\n",
        );
        let site = ".local/lib/python3.11/site-packages";
        let plant = format!(
            r#"  - name: plant
    lang: python
    code: |
      import os, time
      pth = "/sandbox/{site}/zz.pth"
      line = "import os; open('/tmp/pth-ran-as-%d' % os.getuid(), 'w').close()\n"
      if os.fork() == 0:
          os.setsid()
          end = time.time() + 15
          while time.time() < end:
              try:
                  os.makedirs(os.path.dirname(pth), exist_ok=True)
                  open(pth, "w").write(line)
              except OSError:
                  pass
              time.sleep(0.01)
          os._exit(0)
      time.sleep(0.3)
      print("planted")
"#
        );
        yaml.push_str(&plant);
        for i in 0..4 {
            yaml.push_str(&format!(
                r#"  - name: check{i}
    lang: python
    code: |
      import os
      print(sorted(n for n in os.listdir("/tmp") if n.startswith("pth-ran")))
      print(os.path.exists("/sandbox/.local"))
"#
            ));
        }
        yaml.push_str(&format!(
            r#"  - name: own-pth
    lang: python
    files: [{{ src: own.pth, dest: {site}/own.pth }}]
    code: |
      import os
      print(sorted(n for n in os.listdir("/tmp") if n.startswith("pth-ran")))
"#
        ));
        dir.write(
            "own.pth",
            "import os; open('/tmp/pth-ran-as-%d' % os.getuid(), 'w').close()\n",
        );
        let r = run_one_slot(backend, &yaml, &dir, &[]);
        r.assert_status("plant", "passed");
        for i in 0..4 {
            let j = r.assert_status(&format!("check{i}"), "passed");
            assert_eq!(
                field(j, "stdout"),
                "[]\nFalse\n",
                "{backend}: check{i} saw what an earlier job planted: {j}"
            );
        }
        let j = r.assert_status("own-pth", "passed");
        let uid = if backend == "native" {
            1000
        } else {
            llm_sandbox::backend::tarball::SANDBOX_UID as u32
        };
        assert_eq!(
            field(j, "stdout").trim(),
            format!("['pth-ran-as-{uid}']"),
            "{backend}: a job's own .pth runs as in a fresh python3, as the job's user: {j}"
        );
    }
}

/// Review item 15: Files are collected in time linear in their size: a 60 MiB file under
/// `expect.files` is checked (reading the agent's answer was quadratic: about 50 s of the
/// runner's CPU, past the answer's deadline of the job's timeout plus 30 s: `error`).
#[test]
fn a_big_collected_file_is_checked() {
    for backend in backends() {
        let dir = Scratch::new();
        let yaml = r#"
jobs:
  - name: big-file
    lang: python
    timeout: 5s
    limits: { disk: 128MiB, memory: 512MiB }
    expect: { files: { "big.bin": { exists: true } } }
    code: |
      with open("big.bin", "wb") as f:
          f.write(b"\0" * (60 << 20))
"#;
        let r = run_one_slot(backend, yaml, &dir, &[]);
        r.assert_status("big-file", "passed");
    }
}

/// Review item 18: A job that times out takes its warm container down with it: the next job runs in
/// another container (and a job that ends by itself leaves a container that is reused).
#[test]
fn a_timeout_takes_the_warm_container_down() {
    for backend in containers() {
        let dir = Scratch::new();
        // The container's identity: the engine's id in the path of its /etc/hostname.
        let whoami = "grep -o '[0-9a-f]\\{64\\}' /proc/self/mountinfo | head -1";
        let job = |name: &str, extra: &str, code: &str| {
            format!("  - name: {name}\n    lang: bash\n{extra}    code: |\n      {code}\n")
        };
        let yaml = format!(
            "jobs:\n{}{}{}{}",
            job("first", "", whoami),
            job("spin", "    timeout: 1s\n", "while :; do :; done"),
            job("second", "", whoami),
            job("third", "", whoami),
        );
        let r = run_one_slot(backend, &yaml, &dir, &[]);
        let id = |n: &str| {
            field(r.assert_status(n, "passed"), "stdout")
                .trim()
                .to_string()
        };
        let (first, second, third) = (id("first"), id("second"), id("third"));
        assert_eq!(first.len(), 64, "{backend}: no container id in {first:?}");
        assert_ne!(first, second, "{backend}: the container outlived a timeout");
        assert_eq!(second, third, "{backend}: a clean container was not reused");
        r.assert_status("spin", "timeout");
        assert!(!text(r.job("spin")).is_empty());
    }
}
