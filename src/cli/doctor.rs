//! `llm-sandbox doctor`: which backends and languages work here, and why not.

use llm_sandbox::lang;
use llm_sandbox::sandbox::cgroup;
use llm_sandbox::spec::types::{BackendKind, Lang};
use llm_sandbox::Session;
use serde_json::json;

/// Tries a real sandbox: `/bin/true` through the whole native path.
fn native_check() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut s = Session::builder()
            .lang(Lang::Bash)
            .open()
            .await
            .map_err(|e| e.to_string())?;
        let out = s
            .execute_command("echo ok")
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.close().await;
        if out.stdout.trim() == "ok" {
            Ok(())
        } else {
            Err(format!(
                "a test sandbox printed {:?} (stderr {:?})",
                out.stdout, out.stderr
            ))
        }
    })
}

/// The kubernetes backend's cluster, if one is configured (`Ok(None)`: none).
fn kubernetes_check() -> Result<Option<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(llm_sandbox::backend::kubernetes::probe())
}

/// A container engine (docker or podman) found from the environment, as a job without
/// `backends` settings would: `Ok(description)` or `Err(what is wrong and how to fix it)`.
fn engine_check(kind: BackendKind) -> Result<String, String> {
    use llm_sandbox::backend::docker::engine;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (ep, found) = if kind == BackendKind::Podman {
        let (ep, source) = engine::Endpoint::resolve_podman(None, std::path::Path::new("."))?;
        (ep, source.describe())
    } else {
        let ep = engine::Endpoint::resolve(None, None, std::path::Path::new("."))?;
        let from = if std::env::var_os("DOCKER_HOST").is_some() {
            "DOCKER_HOST"
        } else {
            "the local socket"
        };
        (ep, from)
    };
    let (version, missing) = rt.block_on(engine::probe(&ep, kind))?;
    let images = if missing.is_empty() {
        "every default image present".to_string()
    } else {
        format!(
            "default images missing: {} (build them: scripts/build-images {kind})",
            missing.join(", ")
        )
    };
    Ok(format!(
        "{kind} {version} at {} ({found}); {images}",
        ep.host
    ))
}

pub fn run(as_json: bool) -> i32 {
    let kube = std::thread::spawn(kubernetes_check);
    let native = std::thread::spawn(native_check)
        .join()
        .unwrap_or_else(|_| Err("the check panicked".into()));
    let engines: Vec<(BackendKind, Result<String, String>)> =
        [BackendKind::Docker, BackendKind::Podman]
            .into_iter()
            .map(|k| {
                let r = std::thread::spawn(move || engine_check(k))
                    .join()
                    .unwrap_or_else(|_| Err("the check panicked".into()));
                (k, r)
            })
            .collect();
    let kube = kube
        .join()
        .unwrap_or_else(|_| Err("the check panicked".into()));
    let kube_detail = match &kube {
        Ok(Some(c)) => c.clone(),
        Ok(None) => "no cluster configured ($KUBECONFIG, ~/.kube/config, in-cluster, or `backends.kubernetes.kubeconfig` in a job file)".into(),
        Err(e) => e.clone(),
    };
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
                    "limits": match &limits { Ok(m) => m.describe(), Err(e) => format!("rlimits only: {e}") },
                    "landlock_abi": llm_sandbox::sandbox::landlock::abi(),
                    "network": {"ok": user_net.is_some(), "detail": network_detail},
                    "runtime_dir": {"ok": runtime_dir.is_ok(), "detail": match &runtime_dir { Ok(d) | Err(d) => d }},
                },
                "docker": {"ok": engines[0].1.is_ok(), "detail": match &engines[0].1 { Ok(d) | Err(d) => d }},
                "podman": {"ok": engines[1].1.is_ok(), "detail": match &engines[1].1 { Ok(d) | Err(d) => d }},
                "kubernetes": {"ok": matches!(kube, Ok(Some(_))), "detail": kube_detail},
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
        Ok(()) => println!(
            "  ok    native      Linux namespaces (user, mount, pid, net, ipc, uts, cgroup), seccomp, {}",
            match llm_sandbox::sandbox::landlock::abi() {
                0 => "no Landlock (kernel without it)".to_string(),
                n => format!("Landlock ABI {n}"),
            }
        ),
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
    let mark = match &kube {
        Ok(Some(_)) => "ok  ",
        Ok(None) | Err(_) => "--  ",
    };
    println!("  {mark}  kubernetes  {kube_detail}");
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
