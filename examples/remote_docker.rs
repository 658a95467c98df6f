//! Sessions on a remote Docker host (tcp + TLS), in the two ways of the seed:
//!
//! 1. the host and TLS files given to the builder (`.docker_host(..).tls(..)`);
//! 2. a `bollard::Docker` client the caller built, passed with `.docker_client(..)`
//!    (the Rust counterpart of the seed's `client=docker.DockerClient(...)`).
//!
//! ```console
//! $ DOCKER_HOST=tcp://build-box:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=~/.docker/build-box \
//!     cargo run --example remote_docker
//! $ cargo run --example remote_docker -- tcp://build-box:2376 ~/.docker/build-box
//! ```
//!
//! The certificate folder holds `ca.pem`, `cert.pem` and `key.pem`, as for the docker
//! CLI. A `tcp://` host without TLS settings is used in plain HTTP (only on a trusted
//! network); `unix:///var/run/docker.sock` works too. The remote daemon needs the image
//! (`llm-sandbox/bash:latest`, or `EXAMPLE_IMAGE`), e.g.
//! `docker save llm-sandbox/bash:latest | docker -H tcp://build-box:2376 --tlsverify load`.
//! With no host given the example explains this and exits 0.

use anyhow::{ensure, Context, Result};
use llm_sandbox::{BackendKind, Lang, Session, SessionBuilder};
use std::path::PathBuf;

/// Where to connect: from the arguments, else the docker CLI's environment.
struct Remote {
    host: String,
    /// The folder of ca.pem, cert.pem, key.pem when TLS is on.
    certs: Option<PathBuf>,
}

fn remote_from_env() -> Option<Remote> {
    let mut args = std::env::args().skip(1);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let host = args.next().or_else(|| env("DOCKER_HOST"))?;
    let tls_verify = env("DOCKER_TLS_VERIFY").is_some_and(|v| v != "0" && v != "false");
    let certs = args.next().map(PathBuf::from).or_else(|| {
        tls_verify.then(|| {
            env("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env("HOME").unwrap_or_default()).join(".docker"))
        })
    });
    Some(Remote { host, certs })
}

/// Runs a little shell in a session built by `builder`, then closes it.
async fn demo(what: &str, builder: SessionBuilder) -> Result<()> {
    println!("{what}: opening a session ...");
    let mut s = builder
        .lang(Lang::Bash)
        .backend(BackendKind::Docker)
        .image(std::env::var("EXAMPLE_IMAGE").unwrap_or_else(|_| "llm-sandbox/bash:latest".into()))
        .open()
        .await
        .with_context(|| format!("{what}: cannot open the session"))?;
    let out = s
        .run("echo \"hello from $(hostname), uid $(id -u)\"", &[])
        .await?;
    println!("{what}: exit {:?}, stdout {:?}", out.exit_code, out.stdout);
    ensure!(
        out.success() && out.stdout.starts_with("hello from "),
        "{out:?}"
    );
    s.close().await?;
    println!("{what}: closed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(r) = remote_from_env() else {
        println!(
            "No Docker host given. Run it with a host and, for TLS, a folder of ca.pem, cert.pem, key.pem:\n\
             \n  cargo run --example remote_docker -- tcp://HOST:2376 /path/to/certs\n\
             \nor with the docker CLI's environment:\n\
             \n  DOCKER_HOST=tcp://HOST:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=/path/to/certs cargo run --example remote_docker\n\
             \nThe daemon there needs the image llm-sandbox/bash:latest (or set EXAMPLE_IMAGE)."
        );
        return Ok(());
    };
    println!(
        "Docker host {} ({})",
        r.host,
        match &r.certs {
            Some(d) => format!("TLS, certificates in {}", d.display()),
            None => "no TLS".into(),
        }
    );

    // 1. The builder connects: host plus, for TLS, the CA, client certificate and key.
    let mut b = Session::builder().docker_host(&r.host);
    if let Some(d) = &r.certs {
        b = b.tls(d.join("ca.pem"), d.join("cert.pem"), d.join("key.pem"));
    }
    demo("docker_host + tls", b).await?;

    // 2. The caller builds the bollard client (any host, any TLS setup, its own timeouts)
    //    and hands it over.
    use bollard::{Docker, API_DEFAULT_VERSION};
    const TIMEOUT_S: u64 = 120;
    let client = if r.host.starts_with("unix://") {
        Docker::connect_with_unix(&r.host, TIMEOUT_S, API_DEFAULT_VERSION)
    } else if let Some(d) = &r.certs {
        Docker::connect_with_ssl(
            &r.host,
            &d.join("key.pem"),
            &d.join("cert.pem"),
            &d.join("ca.pem"),
            TIMEOUT_S,
            API_DEFAULT_VERSION,
        )
    } else {
        Docker::connect_with_http(&r.host, TIMEOUT_S, API_DEFAULT_VERSION)
    }
    .context("cannot build the bollard client")?;
    demo("docker_client", Session::builder().docker_client(client)).await?;
    Ok(())
}
