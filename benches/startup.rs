//! Start-up cost of a native sandbox, against the bare host process (issue: "started in
//! milliseconds"). Run with `bench/startup` (or `cargo bench --bench startup -- N`).
//!
//! Measures, N times each, medians in milliseconds:
//! - bare `/bin/true` and bare `/usr/bin/python3 -c pass` (fork + exec from this process);
//! - `/bin/true` and `python3 -c pass` in a fresh native sandbox, through the same path the
//!   runner uses (helper spawn, namespaces, root, cgroup, step, teardown), timed from spawn
//!   to the last result.

use llm_sandbox::sandbox::host;
use llm_sandbox::sandbox::{SandboxConfig, SandboxLimits, Step, StepKind};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// CPU time the whole machine has spent busy (all cores, user + system + interrupts), ms.
fn cpu_busy_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| f.get(*i))
        .sum();
    busy * 1000.0 / 100.0
}

fn bare(argv: &[&str], n: usize) -> Vec<Duration> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let st = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .status()
            .expect("spawn");
        assert!(st.success());
        v.push(t.elapsed());
    }
    v
}

fn config(dir: &Path, i: usize, argv: &[&str]) -> SandboxConfig {
    let d = dir.join(format!("s{i}"));
    std::fs::create_dir_all(d.join("root")).unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    // `python3 -B main.py` is the preloaded form of a Python job (README, "Preloaded
    // Python"): the file is an input, and the server preloads after the first such job.
    let preload = argv.get(2) == Some(&"main.py");
    let inputs = dir.join("inputs");
    if preload && !inputs.join("main.py").exists() {
        std::fs::create_dir_all(&inputs).unwrap();
        std::fs::write(inputs.join("main.py"), "pass\n").unwrap();
    }
    SandboxConfig {
        id: format!("{}-bench-{i}", llm_sandbox::owner::prefix()),
        root_mount: d.join("root"),
        inputs_dir: preload.then_some(inputs),
        out_dir: d.join("out"),
        persistent_workdir: None,
        binds: vec![],
        rootfs: None,
        path: vec!["/usr/bin".into(), "/bin".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        steps: vec![Step {
            kind: StepKind::Run,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: 10_000,
            capture_cap: 1 << 20,
            as_root: false,
            limited: true,
            cpu_seconds: Some(11),
        }],
        limits: SandboxLimits {
            memory: 512 << 20,
            cpus: 1.0,
            pids: 128,
            disk: 64 << 20,
            open_files: 256,
            address_space_fallback: true,
        },
        network: false,
        user_net: None,
        collect_globs: vec![],
        collect_paths: vec![],
        collect_cap: 0,
        preload,
        preload_modules: vec![],
    }
}

fn sandboxed(rt: &tokio::runtime::Runtime, dir: &Path, argv: &[&str], n: usize) -> Vec<Duration> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // The benchmark's sandbox servers, kept from one sample to the next as a run keeps them.
    static SERVERS: std::sync::LazyLock<host::Servers> =
        std::sync::LazyLock::new(host::Servers::new);
    // Preloaded jobs have their own: a server preloads only when the first job it serves
    // asks for it (it then scrubs the memory it frees from its start).
    static PRELOAD_SERVERS: std::sync::LazyLock<host::Servers> =
        std::sync::LazyLock::new(host::Servers::new);
    let cancel = CancellationToken::new();
    let mut v = Vec::new();
    for _ in 0..n {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = config(dir, i, argv);
        if let Some(gap) = std::env::var("BENCH_GAP_MS")
            .ok()
            .and_then(|g| g.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(gap));
        }
        let t = Instant::now();
        let o = rt
            .block_on(host::run(
                if cfg.preload {
                    &PRELOAD_SERVERS
                } else {
                    &SERVERS
                },
                &cfg,
                None,
                1 << 20,
                &cancel,
            ))
            .expect("sandbox");
        v.push(t.elapsed());
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            use llm_sandbox::sandbox::proto::Msg;
            let shown: Vec<&Msg> = o
                .msgs
                .iter()
                .filter(|m| matches!(m, Msg::Timing { .. } | Msg::Ready { .. } | Msg::Step(_)))
                .collect();
            eprintln!("{:?} {shown:?}", t.elapsed());
        }
        let ok = o.msgs.iter().any(
            |m| matches!(m, llm_sandbox::sandbox::proto::Msg::Step(s) if s.exit_code == Some(0)),
        );
        assert!(ok, "sandboxed {argv:?} failed: {:?}", o.msgs);
    }
    v
}

fn main() {
    // Test harnesses (`cargo test --all-targets`, nextest) list or run benches with flags:
    // this benchmark only runs when asked for by `cargo bench` / `bench/startup`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") || !args.iter().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let exe = env!("CARGO_BIN_EXE_llm-sandbox");
    // The helper under test: this build's, unless LLM_SANDBOX_HELPER names another binary
    // (to compare two builds on the same machine state).
    if std::env::var_os("LLM_SANDBOX_HELPER").is_none() {
        std::env::set_var("LLM_SANDBOX_HELPER", exe);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let python = "/usr/bin/python3";
    // `BENCH_ONLY=true|python`: only sandboxed runs of that one, back to back (for a
    // profiler), and the CPU time they cost the whole machine (kernel work included).
    if let Ok(which) = std::env::var("BENCH_ONLY") {
        // BENCH_ARGV='["/usr/bin/python3", "-c", "..."]': that program instead.
        let custom: Vec<String> = std::env::var("BENCH_ARGV")
            .ok()
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default();
        let custom: Vec<&str> = custom.iter().map(String::as_str).collect();
        let argv: &[&str] = if !custom.is_empty() {
            &custom
        } else if which == "python" {
            &[python, "-c", "pass"]
        } else if which == "preload" {
            &[python, "-B", "main.py"]
        } else {
            &["/bin/true"]
        };
        sandboxed(&rt, dir.path(), argv, 3);
        let (t, busy) = (Instant::now(), cpu_busy_ms());
        let v = sandboxed(&rt, dir.path(), argv, n);
        let wall = t.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let cpu = cpu_busy_ms() - busy;
        println!(
            "{argv:?} sandboxed x{n}: median {:.2} ms, mean {:.2} ms, machine CPU {:.2} ms per run",
            median(v),
            wall.as_secs_f64() * 1000.0 / n as f64,
            cpu / n as f64
        );
        return;
    }
    // Warm up the page cache.
    bare(&["/bin/true"], 3);
    bare(&[python, "-c", "pass"], 3);
    sandboxed(&rt, dir.path(), &["/bin/true"], 3);
    let preloaded: &[&str] = &[python, "-B", "main.py"];
    sandboxed(&rt, dir.path(), preloaded, 3);
    // Interleaved, one run of each per round, so that drift of the machine (frequency,
    // other load) affects bare and sandboxed runs alike.
    let (mut bt, mut bp, mut st, mut sp, mut pp) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        bt.extend(bare(&["/bin/true"], 1));
        st.extend(sandboxed(&rt, dir.path(), &["/bin/true"], 1));
        bp.extend(bare(&[python, "-c", "pass"], 1));
        sp.extend(sandboxed(&rt, dir.path(), &[python, "-c", "pass"], 1));
        pp.extend(sandboxed(&rt, dir.path(), preloaded, 1));
    }
    let (bare_true, sb_true, bare_py, sb_py) = (median(bt), median(st), median(bp), median(sp));
    let pre_py = median(pp);
    println!("native sandbox start-up, median of {n} interleaved rounds (ms)");
    // The `true` target is absolute (set when a bare `/bin/true` took about 0.8 ms here): the
    // ratio to bare says how much of a slower hour is the machine's.
    println!("  /bin/true        bare {bare_true:7.2}   sandboxed {sb_true:7.2}   ratio {:.2}x   (target: sandboxed <= 3.00 ms)   {}", sb_true / bare_true, if sb_true <= 3.0 { "MET" } else { "NOT MET" });
    println!("  python3 -c pass  bare {bare_py:7.2}   sandboxed {sb_py:7.2}   ratio {:.2}x   (target <= 1.20x)   {}", sb_py / bare_py, if sb_py / bare_py <= 1.2 { "MET" } else { "NOT MET" });
    println!("  python, preloaded                  sandboxed {pre_py:7.2}   ratio {:.2}x   (target <= 0.60x)   {}", pre_py / bare_py, if pre_py / bare_py <= 0.6 { "MET" } else { "NOT MET" });
}
