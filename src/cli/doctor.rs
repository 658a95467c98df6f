//! `llm-sandbox doctor`: which backends and languages work here, and why not.

use llm_sandbox::lang;
use llm_sandbox::sandbox::cgroup;
use llm_sandbox::spec::types::{BackendKind, Lang};
use serde_json::json;

/// One backend's check ([`llm_sandbox::backend::Backend::doctor`]), on a runtime of its
/// own (the checks run side by side).
fn check(kind: BackendKind) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(llm_sandbox::backend::of(kind).doctor())
        .map_err(|e| e.to_string())
}

pub fn run(as_json: bool) -> i32 {
    // Every backend's check, side by side.
    let checks: Vec<_> = BackendKind::ALL
        .into_iter()
        .map(|k| (k, std::thread::spawn(move || check(k))))
        .collect();
    let mut results: Vec<(BackendKind, Result<String, String>)> = checks
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.join()
                    .unwrap_or_else(|_| Err("the check panicked".into())),
            )
        })
        .collect();
    let result_of = |results: &mut Vec<(BackendKind, Result<String, String>)>, kind| {
        let i = results.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        results.remove(i).1
    };
    let native = result_of(&mut results, BackendKind::Native);
    let kube = result_of(&mut results, BackendKind::Kubernetes);
    // Docker, then Podman.
    let engines = results;
    let limits = cgroup::detect();
    let user_net = llm_sandbox::sandbox::usernet::find();
    let network_detail = match &user_net {
        Some(p) => format!(
            "`network = true`: user-mode networking by {} (the outside, never the host's loopback)",
            p.display()
        ),
        None => format!(
            "`network = true` jobs are errors: {} is not installed; {}",
            llm_sandbox::sandbox::usernet::PROGRAM,
            llm_sandbox::sandbox::usernet::INSTALL_HINT
        ),
    };
    let runtime_dir = match llm_sandbox::owner::runs_root() {
        Ok(p) => Ok(format!("{} (private: 0700, yours)", p.display())),
        Err(e) => Err(e.to_string()),
    };
    super::quiet_on_closed_stdout();
    let langs: Vec<(Lang, Result<lang::HostToolchain, String>)> = Lang::ALL
        .iter()
        .map(|l| (*l, lang::probe_host(*l)))
        .collect();
    if as_json {
        let v = json!({
            "backends": {
                "native": {
                    "ok": native.is_ok(),
                    "detail": native.as_ref().err(),
                    "sandbox": native.as_ref().ok(),
                    "limits": match &limits { Ok(m) => m.describe(), Err(e) => format!("rlimits only: {e}") },
                    "landlock_abi": llm_sandbox::sandbox::landlock::abi(),
                    "network": {"ok": user_net.is_some(), "detail": network_detail},
                    "runtime_dir": {"ok": runtime_dir.is_ok(), "detail": match &runtime_dir { Ok(d) | Err(d) => d }},
                },
                "docker": {"ok": engines[0].1.is_ok(), "detail": match &engines[0].1 { Ok(d) | Err(d) => d }},
                "podman": {"ok": engines[1].1.is_ok(), "detail": match &engines[1].1 { Ok(d) | Err(d) => d }},
                "kubernetes": {"ok": kube.is_ok(), "detail": match &kube { Ok(d) | Err(d) => d }},
            },
            "languages": langs.iter().map(|(l, r)| json!({
                "lang": l,
                "native": r.is_ok(),
                "programs": r.as_ref().ok().map(|t| t.programs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()),
                "detail": r.as_ref().err(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return if native.is_ok() { 0 } else { 1 };
    }
    println!("Backends");
    match &native {
        Ok(d) => println!("  ok    native      {d}"),
        Err(e) => println!("  FAIL  native      {e}"),
    }
    match &limits {
        Ok(m) => println!(
            "        limits      memory, pids and CPU enforced by {}",
            m.describe()
        ),
        Err(e) => println!("        limits      rlimits only (address space, processes): {e}"),
    }
    println!("        network     {network_detail}");
    match &runtime_dir {
        Ok(d) => println!("        files       {d}"),
        Err(e) => println!("  FAIL  files       {e}"),
    }
    for (b, r) in &engines {
        match r {
            Ok(d) => println!("  ok    {:<11} {d}", b.as_str()),
            Err(e) => println!("  --    {:<11} {e}", b.as_str()),
        }
    }
    // As for the engines: a backend that is not set up here is not available ("--"), not
    // failing; FAIL is for the native backend, which must work.
    match &kube {
        Ok(d) => println!("  ok    kubernetes  {d}"),
        Err(e) => println!("  --    kubernetes  {e}"),
    }
    println!("\nLanguages (native backend)");
    for (l, r) in &langs {
        match r {
            Ok(t) => println!(
                "  ok    {:<11} {}",
                l.as_str(),
                t.programs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => println!("  --    {:<11} {e}", l.as_str()),
        }
    }
    if native.is_ok() {
        0
    } else {
        1
    }
}
