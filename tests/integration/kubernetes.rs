//! The kubernetes backend through the real kube client against examples/fake-apiserver
//! (started per test as a user would: `fake-apiserver --port 0 --kubeconfig FILE`): output,
//! stdin, exit codes, input files and artifacts, timeouts, pods that never become ready,
//! the merged pod as the API server receives it, cleanup at the end, on Ctrl-C and after a
//! killed run. The pod-spec building itself has snapshot tests in
//! src/backend/kubernetes/pod.rs; the conformance suite runs on the fake too
//! (tests/integration/conformance.rs).
//!
//! `real_cluster`: the same kind of job on the cluster of `$KUBECONFIG` (kind, k3s, ...;
//! see the README), skipped when it is not set.

use crate::common;

use common::{field, FakeCluster, Scratch};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A job file using the fake cluster through `[backends.kubernetes] kubeconfig` (a path
/// relative to the job file).
fn scratch_with_kubeconfig(fake: &FakeCluster) -> Scratch {
    let s = Scratch::new();
    s.write(
        "cluster/kubeconfig",
        &std::fs::read_to_string(&fake.kubeconfig).unwrap(),
    );
    s
}

const HEADER: &str = r#"
[defaults]
backend = "kubernetes"
timeout = "20s"

[backends.kubernetes]
kubeconfig = "cluster/kubeconfig"
"#;

#[test]
fn jobs_run_in_pods_through_kube() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    s.write("data/in.txt", "hello from the host\n");
    s.write(
        "jobs.toml",
        &format!(
            r#"{HEADER}
[[jobs]]
name = "output"
lang = "python"
code = 'import sys; print("to stdout"); print("to stderr", file=sys.stderr)'
expect.stdout = "to stdout"
expect.stderr = "to stderr"

[[jobs]]
name = "stdin"
lang = "python"
stdin = "line one\nline two\n"
code = 'import sys; data = sys.stdin.read(); print(len(data), data.upper(), end="")'
expect.stdout = "18 LINE ONE\nLINE TWO"

[[jobs]]
name = "exit-code"
lang = "bash"
code = 'echo partial; exit 42'

[[jobs]]
name = "files"
lang = "bash"
files = [{{ src = "data/in.txt", dest = "input/in.txt" }}]
artifacts = ["out/*.txt"]
code = '''
mkdir -p out
tr a-z A-Z < input/in.txt > out/upper.txt
ln -s /etc/passwd out/link.txt
wc -c < input/in.txt
'''
expect.stdout = "20"
expect.files."out/upper.txt" = {{ equals = "HELLO FROM THE HOST\n" }}

[[jobs]]
name = "timeout"
lang = "bash"
timeout = "1s"
code = 'echo started; sleep 30; echo never'

[[jobs]]
name = "compiled"
lang = "c"
code = '''
#include <stdio.h>
int main(void) {{ printf("compiled ok\n"); return 0; }}
'''
expect.stdout = "compiled ok"
"#
        ),
    );
    // Warm pods (the default), then one new pod per job.
    for fresh in [false, true] {
        check_jobs(&fake, &s, fresh);
    }
}

fn check_jobs(fake: &FakeCluster, s: &Scratch, fresh: bool) {
    let arts = s.path().join(if fresh { "arts-fresh" } else { "arts" });
    let mut args = vec!["--artifacts", arts.to_str().unwrap(), "jobs.toml"];
    if fresh {
        args.push("--fresh-containers");
    }
    let r = s.run_json(&args);
    r.assert_status("output", "passed");
    r.assert_status("stdin", "passed");
    r.assert_status("compiled", "passed");
    let j = r.assert_status("exit-code", "failed");
    assert_eq!(j["exit_code"], 42, "{j:#}");
    assert_eq!(field(j, "stdout"), "partial\n");
    assert_eq!(j["backend"], "kubernetes");
    assert_eq!(j["image"], "llm-sandbox/bash:latest");

    let j = r.assert_status("files", "passed");
    assert_eq!(
        std::fs::read_to_string(arts.join("files/out/upper.txt")).unwrap(),
        "HELLO FROM THE HOST\n"
    );
    // The planted symlink is never followed (nor copied as a link to the host's file).
    let link = arts.join("files/out/link.txt");
    assert!(
        !link.exists()
            || !std::fs::read_to_string(&link)
                .unwrap_or_default()
                .contains("root:"),
        "the symlink was followed: {j:#}"
    );

    let j = r.assert_status("timeout", "timeout");
    assert!(field(j, "message").contains("timed out after 1s"), "{j:#}");
    assert!(field(j, "stdout").contains("started") && !field(j, "stdout").contains("never"));
    let ms = j["duration_ms"].as_u64().unwrap();
    assert!((900..10_000).contains(&ms), "the timeout took {ms} ms");

    assert_eq!(r.code, 1);
    assert!(
        fake.pod_names().is_empty(),
        "pods left after the run: {:?}",
        fake.pod_names()
    );
}

#[test]
fn kubeconfig_comes_from_the_environment_too() {
    let fake = FakeCluster::start();
    let s = Scratch::new();
    s.write(
        "hello.toml",
        r#"
[[jobs]]
name = "hello"
lang = "bash"
code = 'echo "hello from $PWD"'
expect.stdout = "hello from /sandbox"
"#,
    );
    let r = common::run_report(
        s.cmd()
            .env("KUBECONFIG", &fake.kubeconfig)
            .args([
                "run",
                "--json",
                "-",
                "--no-progress",
                "--backend",
                "kubernetes",
            ])
            .arg("hello.toml"),
    );
    r.assert_status("hello", "passed");
    assert!(fake.pod_names().is_empty());
}

#[test]
fn pods_that_never_become_ready_are_errors_within_the_bound() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    s.write(
        "jobs.toml",
        &format!(
            r#"{HEADER}start_timeout = "2s"

[[jobs]]
name = "unpullable"
lang = "bash"
image = "registry.example/unpullable:1"
code = 'echo never'

[[jobs]]
name = "unschedulable"
lang = "bash"
limits.cpus = 4096
code = 'echo never'
"#
        ),
    );
    let t0 = Instant::now();
    let r = s.run_json(&["jobs.toml"]);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the wait was not bounded: {:?}",
        t0.elapsed()
    );
    let j = r.assert_status("unpullable", "error");
    let m = field(j, "message");
    assert!(
        m.contains("cannot start")
            && (m.contains("ErrImagePull") || m.contains("ImagePullBackOff")),
        "{m}"
    );
    assert!(m.contains("registry.example/unpullable:1"), "{m}");
    assert_eq!(j["phase"], "prepare");
    let j = r.assert_status("unschedulable", "error");
    let m = field(j, "message");
    assert!(
        m.contains("did not become ready within 2s") && m.contains("Insufficient cpu"),
        "{m}"
    );
    assert!(fake.pod_names().is_empty(), "{:?}", fake.pod_names());
}

#[test]
fn unsupported_settings_say_what_to_do() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    s.write("Dockerfile", "FROM llm-sandbox/python:latest\n");
    s.write(
        "jobs.toml",
        &format!(
            r#"{HEADER}
[[jobs]]
name = "dockerfile"
lang = "python"
dockerfile = "Dockerfile"
code = 'print(1)'

[[jobs]]
name = "libraries"
lang = "python"
libraries = ["requests"]
code = 'print(1)'

[[jobs]]
name = "host-path"
lang = "python"
pod_manifest = {{ spec = {{ volumes = [{{ name = "h", hostPath = {{ path = "/" }} }}] }} }}
code = 'print(1)'
"#
        ),
    );
    let r = s.run_json(&["jobs.toml"]);
    let m = field(r.assert_status("dockerfile", "error"), "message").to_string();
    assert!(m.contains("`dockerfile`") && m.contains("`image`"), "{m}");
    let m = field(r.assert_status("libraries", "error"), "message").to_string();
    assert!(m.contains("`libraries`") && m.contains("image"), "{m}");
    let m = field(r.assert_status("host-path", "error"), "message").to_string();
    assert!(m.contains("pod_manifest") && m.contains("hostPath"), "{m}");
    assert!(fake.pod_names().is_empty());
}

/// Polls the fake's pods until `f` finds something (or 20 s pass).
fn wait_for<T>(fake: &FakeCluster, mut f: impl FnMut(&Value) -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        let (_, body) = fake.get("/api/v1/pods");
        let list: Value = serde_json::from_str(&body).unwrap();
        for p in list["items"].as_array().unwrap() {
            if let Some(x) = f(p) {
                return x;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no such pod: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_pod_merges_the_manifest_file_and_keeps_our_security() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    s.write(
        "pod.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  labels: {team: evals}
spec:
  nodeSelector: {pool: sandboxes}
  hostNetwork: true
  automountServiceAccountToken: true
  containers:
  - name: whatever
    securityContext: {privileged: true, runAsUser: 0}
    resources: {requests: {cpu: 250m}}
"#,
    );
    s.write(
        "jobs.toml",
        r#"
[[jobs]]
name = "merged"
lang = "bash"
backend = "kubernetes"
code = 'sleep 3; id -u'
expect.stdout = "1000"
limits.memory = "256MiB"

[backends.kubernetes]
kubeconfig = "cluster/kubeconfig"
pod_manifest = "pod.yaml"
"#,
    );
    let child = s
        .cmd()
        .args(["run", "--no-progress", "--json", "-", "jobs.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pod = wait_for(&fake, |p| Some(p.clone()));
    let out = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["jobs"][0]["status"], "passed", "{report:#}");
    assert_eq!(pod["metadata"]["labels"]["team"], "evals");
    assert_eq!(pod["metadata"]["labels"]["llm-sandbox"], "1");
    assert_eq!(pod["spec"]["nodeSelector"]["pool"], "sandboxes");
    assert_eq!(pod["spec"]["hostNetwork"], Value::Null);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "llm-sandbox/bash:latest");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(
        c["securityContext"]["runAsUser"],
        llm_sandbox::backend::tarball::SANDBOX_UID
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(c["resources"]["requests"]["cpu"], "250m");
    assert!(fake.pod_names().is_empty());
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn ctrl_c_deletes_the_pods() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    s.write(
        "jobs.toml",
        &format!(
            r#"{HEADER}
[[jobs]]
name = "a"
lang = "bash"
code = 'sleep 60'

[[jobs]]
name = "b"
lang = "bash"
code = 'sleep 60'
"#
        ),
    );
    let mut child = s
        .cmd()
        .args(["run", "--no-progress", "-j", "2", "jobs.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&fake, |p| {
        p["status"]["phase"]
            .as_str()
            .filter(|s| *s == "Running")
            .map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(fake.pod_names().is_empty(), "{:?}", fake.pod_names());
}

#[test]
fn the_next_run_deletes_what_a_killed_run_left() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    s.write(
        "slow.toml",
        &format!("{HEADER}\n[[jobs]]\nname = \"slow\"\nlang = \"bash\"\ncode = 'sleep 60'\n"),
    );
    s.write(
        "quick.toml",
        &format!("{HEADER}\n[[jobs]]\nname = \"quick\"\nlang = \"bash\"\ncode = 'echo ok'\n"),
    );
    let mut child = s
        .cmd()
        .args(["run", "--no-progress", "slow.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&fake, |p| {
        p["status"]["phase"]
            .as_str()
            .filter(|s| *s == "Running")
            .map(|_| ())
    });
    signal(child.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let left = fake.pod_names();
    assert!(!left.is_empty(), "the killed run's pods are there");
    let r = s.run_json(&["quick.toml"]);
    r.assert_status("quick", "passed");
    assert!(
        fake.pod_names().is_empty(),
        "{left:?} were not deleted: {:?}",
        fake.pod_names()
    );
}

#[test]
fn the_fake_apiserver_refuses_what_it_does_not_serve() {
    let fake = FakeCluster::start();
    let (code, body) = fake.get("/api/v1/namespaces/default/pods/missing");
    assert_eq!(code, 404);
    assert!(body.contains("\"reason\":\"NotFound\""), "{body}");
    let (code, body) = fake.get("/api/v1/namespaces/default/pods/missing/exec?command=true");
    assert_eq!(code, 404, "{body}");
    let (code, body) = fake.get("/api/v1/pods?watch=true");
    assert_eq!(code, 405, "{body}");
    let (code, _) = fake.get("/version");
    assert_eq!(code, 200);
}

/// The names of the pods seen while `args` runs (polled every 10 ms).
fn pods_seen_during(fake: &FakeCluster, s: &Scratch, args: &[&str]) -> (Vec<String>, Value) {
    let (seen, _, report) = pods_during(fake, s, args);
    (seen, report)
}

/// The pods seen while `args` runs, how many existed at each poll, and the report.
fn pods_during(fake: &FakeCluster, s: &Scratch, args: &[&str]) -> (Vec<String>, Vec<usize>, Value) {
    let mut child = s
        .cmd()
        .args(["run", "--no-progress", "--json", "-"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut counts = Vec::new();
    while child.try_wait().unwrap().is_none() {
        let now = fake.pod_names();
        counts.push(now.len());
        for n in now {
            if !seen.contains(&n) {
                seen.push(n);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (seen, counts, serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn warm_pods_of_other_images_make_room() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    let mut jobs = String::from(HEADER);
    for i in 0..8 {
        let (lang, code) = if i % 2 == 0 {
            ("bash", "sleep 0.2; echo ok")
        } else {
            ("python", "import time; time.sleep(0.2); print('ok')")
        };
        jobs.push_str(&format!(
            "\n[[jobs]]\nname = \"job{i}\"\nlang = \"{lang}\"\ncode = \"{code}\"\nexpect.stdout = \"ok\"\n"
        ));
    }
    s.write("jobs.toml", &jobs);
    let (_, counts, report) = pods_during(&fake, &s, &["-j", "2", "jobs.toml"]);
    assert_eq!(report["summary"]["passed"], 8, "{report:#}");
    // Two job slots, two images: about two warm pods at a time, not two per image (which
    // keeps three or four for most of the run). Both pools start pods ahead at first, and a
    // pod no job is left for is deleted in the background (the slot does not wait for it),
    // so more than two exist at times, on a loaded machine up to four.
    let live: Vec<usize> = counts.iter().copied().filter(|&n| n > 0).collect();
    let over = live.iter().filter(|&&n| n > 2).count();
    assert!(
        over * 2 <= live.len() && live.iter().all(|&n| n <= 4),
        "pods at once, poll by poll: {counts:?}"
    );
    assert!(fake.pod_names().is_empty());
}

#[test]
fn warm_pods_are_reused_and_cleaned_between_jobs() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    let mut jobs = String::from(HEADER);
    for i in 0..4 {
        jobs.push_str(&format!(
            r#"
[[jobs]]
name = "job{i}"
lang = "bash"
code = '''
ls -A /sandbox | grep -v '^main.sh$' || true
echo secret > /sandbox/left-behind.txt; mkdir -p /sandbox/d; sleep 0.3
'''
expect.stdout = ""
"#
        ));
    }
    s.write("jobs.toml", &jobs);
    let (warm, report) = pods_seen_during(&fake, &s, &["-j", "1", "jobs.toml"]);
    assert_eq!(report["summary"]["passed"], 4, "{report:#}");
    assert!(
        !warm.is_empty() && warm.len() <= 2,
        "4 jobs, one at a time, in warm pods: {warm:?}"
    );
    let (fresh, report) =
        pods_seen_during(&fake, &s, &["-j", "1", "--fresh-containers", "jobs.toml"]);
    assert_eq!(report["summary"]["passed"], 4, "{report:#}");
    assert_eq!(fresh.len(), 4, "one pod per job: {fresh:?}");
    assert!(fake.pod_names().is_empty());
}

/// A run starts no more warm pods than it has jobs for, whatever `-j` says: one job, one
/// pod (before, `-j 3` started three and deleted two unused at the end).
#[test]
fn a_run_starts_no_more_warm_pods_than_it_has_jobs() {
    let fake = FakeCluster::start();
    let s = scratch_with_kubeconfig(&fake);
    let jobs = format!(
        "{HEADER}\n[[jobs]]\nname = \"one\"\nlang = \"bash\"\ncode = \"sleep 0.5; echo ok\"\nexpect.stdout = \"ok\\n\"\n"
    );
    s.write("jobs.toml", &jobs);
    let (warm, report) = pods_seen_during(&fake, &s, &["-j", "3", "jobs.toml"]);
    assert_eq!(report["summary"]["passed"], 1, "{report:#}");
    assert_eq!(warm.len(), 1, "one job, pods {warm:?}");
    assert!(fake.pod_names().is_empty());
}

/// A kube client of the fake cluster, built by the caller (the library API takes it).
async fn client_of(fake: &FakeCluster) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&fake.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_sessions_run_in_one_pod_with_a_callers_client() {
    use llm_sandbox::{BackendKind, Lang, Session};
    let fake = FakeCluster::start();
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Kubernetes)
        .kube_client(client_of(&fake).await)
        .timeout(Duration::from_secs(2))
        .open()
        .await
        .unwrap_or_else(|e| panic!("cannot open a kubernetes session: {e}"));
    assert_eq!(fake.pod_names().len(), 1);

    let out = s
        .run(
            "import sys\nprint('hi')\nprint('oops', file=sys.stderr)\nraise SystemExit(3)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(3), "hi\n", "oops\n")
    );
    // Resource figures come with the result (README, "Resource figures").
    let busy = s.run("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n", &[]).await.unwrap();
    let cpu = busy.cpu_ms.unwrap_or_else(|| panic!("no cpu_ms: {busy:?}"));
    assert!((250..5000).contains(&cpu), "cpu_ms {cpu}: {busy:?}");

    let out = s
        .execute_command_with_stdin("tr a-z A-Z > upper.txt; cat upper.txt", b"kept\n")
        .await
        .unwrap();
    assert_eq!(out.stdout, "KEPT\n", "{out:?}");

    // Files in and out; state persists between calls; symlinks are never followed.
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
    s.copy_to_runtime(host.path().join("in.txt"), "/sandbox/data/in.txt")
        .await
        .unwrap();
    let out = s
        .run(
            "print(open('data/in.txt').read().strip(), open('upper.txt').read().strip())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "from the host KEPT\n", "{out:?}");
    s.copy_from_runtime("upper.txt", host.path().join("out.txt"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "KEPT\n"
    );
    s.execute_command("ln -s /etc/passwd link").await.unwrap();
    let e = s
        .copy_from_runtime("link", host.path().join("link"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("link"), "{e}");
    assert!(!host.path().join("link").exists());

    // A timeout kills the program; the session goes on.
    let out = s.execute_command("echo before; sleep 30").await.unwrap();
    assert!(out.timed_out && out.stdout == "before\n", "{out:?}");
    let out = s.execute_command("cat upper.txt").await.unwrap();
    assert_eq!(out.stdout, "KEPT\n");

    s.close().await.unwrap();
    assert!(fake.pod_names().is_empty(), "{:?}", fake.pod_names());
}

#[test]
fn real_cluster() {
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG") else {
        common::skipped("real-cluster kubernetes test: KUBECONFIG is not set (see the README's Kubernetes backend section for kind and k3s)");
        return;
    };
    let s = Scratch::new();
    s.write(
        "jobs.toml",
        r#"
[defaults]
backend = "kubernetes"
timeout = "30s"

[[jobs]]
name = "hello"
lang = "python"
stdin = "abc"
code = 'import sys; print(sys.stdin.read().upper())'
expect.stdout = "ABC"

[[jobs]]
name = "exit"
lang = "bash"
code = 'echo err >&2; exit 7'
expect.exit_code = 7
expect.stderr = "err"

[[jobs]]
name = "timeout"
lang = "bash"
timeout = "2s"
code = 'echo started; sleep 60'
"#,
    );
    let r = common::run_report(
        s.cmd()
            .env("KUBECONFIG", kubeconfig)
            .args([
                "run",
                "--json",
                "-",
                "--no-progress",
                "--backend-jobs",
                "kubernetes=3",
            ])
            .arg("jobs.toml"),
    );
    r.assert_status("hello", "passed");
    r.assert_status("exit", "passed");
    let j = r.assert_status("timeout", "timeout");
    assert!(field(j, "stdout").contains("started"));
}

#[test]
fn exec_runs_one_program_in_a_pod() {
    let fake = FakeCluster::start();
    let out = common::bin()
        .env("KUBECONFIG", &fake.kubeconfig)
        .args(["exec", "--lang", "python", "--backend", "kubernetes", "-c"])
        .arg("import sys; print(sys.stdin.read().upper(), end=''); print('err', file=sys.stderr); sys.exit(4)")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"from stdin\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FROM STDIN\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = common::bin()
        .env("KUBECONFIG", &fake.kubeconfig)
        .args([
            "exec",
            "--lang",
            "bash",
            "--backend",
            "kubernetes",
            "--timeout",
            "1s",
        ])
        .args(["-c", "echo started; sleep 30"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    assert!(fake.pod_names().is_empty(), "{:?}", fake.pod_names());
}

/// Streaming calls on kubernetes: the pod exec is not streamed yet, so the chunks come
/// when the command ends, separated by stream, with the exact exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_streaming_calls_deliver_chunks_and_the_exit_code() {
    use llm_sandbox::{BackendKind, Lang, Session, StdStream};
    let fake = FakeCluster::start();
    let mut s = Session::builder()
        .lang(Lang::Python)
        .backend(BackendKind::Kubernetes)
        .kube_client(client_of(&fake).await)
        .open()
        .await
        .unwrap_or_else(|e| panic!("cannot open a kubernetes session: {e}"));
    let mut chunks = vec![];
    let out = s
        .execute_command_streaming("echo out; echo err >&2; exit 3", |c| chunks.push(c))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    let text = |which: StdStream| -> String {
        chunks
            .iter()
            .filter(|c| c.stream == which)
            .map(|c| c.text().into_owned())
            .collect()
    };
    assert_eq!(text(StdStream::Stdout), "out\n");
    assert_eq!(text(StdStream::Stderr), "err\n");
    s.close().await.unwrap();
}
