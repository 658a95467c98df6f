//! A loopback Kubernetes API server for trying the `kubernetes` backend without a cluster.
//!
//! ```text
//! cargo run --example fake-apiserver -- --port 0 --kubeconfig /tmp/fake/kubeconfig
//! KUBECONFIG=/tmp/fake/kubeconfig llm-sandbox run --backend kubernetes jobs/hello.toml
//! ```
//!
//! It speaks the real wire protocol (the pod endpoints over HTTP, exec over WebSocket with
//! the `v5.channel.k8s.io` / `v4.channel.k8s.io` channel protocol) and runs each exec in
//! llm-sandbox's own native sandbox, with the pod's `/sandbox` kept across its execs. The
//! pod's image is not pulled: every pod gets the host's toolchains. See server.rs for what
//! it emulates (and what not).

#[allow(dead_code)]
mod server;

use std::io::Write;
use std::path::PathBuf;

const USAGE: &str = "usage: fake-apiserver [--port N] [--kubeconfig FILE] [--namespace NS]

  --port N          port to listen on, on 127.0.0.1 (default 0: the system picks one)
  --kubeconfig FILE write a kubeconfig pointing at this server to FILE, once it listens
  --namespace NS    the kubeconfig context's namespace (default \"default\")

Prints `fake-apiserver listening on http://127.0.0.1:PORT` when it is ready and serves
until interrupted (Ctrl-C or SIGTERM); then it deletes every pod it holds.";

struct Args {
    port: u16,
    kubeconfig: Option<PathBuf>,
    namespace: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        kubeconfig: None,
        namespace: "default".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match key.as_str() {
            "--port" | "-p" => {
                let v = value("--port")?;
                a.port = v.parse().map_err(|_| {
                    format!("--port: {v:?} is not a port number (0-65535; 0 picks a free one)")
                })?;
            }
            "--kubeconfig" => a.kubeconfig = Some(PathBuf::from(value("--kubeconfig")?)),
            "--namespace" | "-n" => a.namespace = value("--namespace")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() {
    // The native sandbox re-executes a helper binary: this one.
    llm_sandbox::sandbox::maybe_run_helper();
    if std::env::var_os("LLM_SANDBOX_HELPER").is_none() {
        if let Ok(exe) = std::env::current_exe() {
            std::env::set_var("LLM_SANDBOX_HELPER", exe);
        }
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fake-apiserver: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-apiserver: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        let srv = match server::FakeApiServer::start(args.port).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "fake-apiserver: cannot listen on 127.0.0.1:{}: {e}",
                    args.port
                );
                return 1;
            }
        };
        if let Some(path) = &args.kubeconfig {
            if let Err(e) = srv.write_kubeconfig(path, &args.namespace) {
                eprintln!(
                    "fake-apiserver: cannot write the kubeconfig {}: {e}",
                    path.display()
                );
                srv.shutdown().await;
                return 1;
            }
        }
        println!("fake-apiserver listening on {}", srv.url());
        if let Some(path) = &args.kubeconfig {
            println!("kubeconfig written to {}", path.display());
        }
        let _ = std::io::stdout().flush();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        eprintln!("fake-apiserver: shutting down");
        srv.shutdown().await;
        0
    });
    std::process::exit(code);
}
