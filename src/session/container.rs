//! A session in one container (Docker, Podman) or one pod (Kubernetes) that lives as long
//! as the session, written once over [`ContainerSandbox`], the primitives the job pipeline
//! uses too ([`crate::backend::container_job`]): the code goes in as a tar, each step is an
//! exec behind the one step shell, files come out as a tar.

use super::{BoxFut, Input, SessionBuilder, SessionError, SessionSandbox};
use crate::backend::container_job::{cap_again, ContainerSandbox, ExecResult, Live, StepIo};
use crate::backend::docker::{self, container::Container};
use crate::backend::kubernetes::{self, SandboxPod};
use crate::backend::step_shell::Measure;
use crate::backend::tarball;
use crate::backend::ExecOutput;
use crate::lang;
use crate::sandbox::{Step, StepKind};
use crate::spec::types::BackendKind;
use crate::stream::ChunkSender;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a session needs of a container or a pod beyond the job pipeline's primitives.
pub(super) trait SessionContainer: ContainerSandbox + 'static {
    /// What the session's sandboxes are made from.
    type Origin: Send + Sync;
    /// A new sandbox whose image has `libs` (none: the session's first sandbox).
    fn start(
        origin: &Self::Origin,
        b: &SessionBuilder,
        libs: &[String],
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Self, SessionError>> + Send;
    /// The end of the session, after its sandbox is gone.
    fn finish(origin: &Self::Origin) -> impl Future<Output = ()> + Send;
    /// The session was dropped without `close`: the sandbox goes away in the background.
    fn abandon(self);
}

pub(super) struct ContainerSession<S: SessionContainer> {
    /// None once closed.
    sandbox: Option<S>,
    origin: S::Origin,
    /// Libraries installed in the current sandbox's image.
    libs: Vec<String>,
}

impl<S: SessionContainer> ContainerSession<S> {
    async fn open(
        origin: S::Origin,
        b: &SessionBuilder,
        cancel: &CancellationToken,
    ) -> Result<Self, SessionError> {
        let sandbox = S::start(&origin, b, &b.libraries, cancel).await?;
        Ok(ContainerSession {
            sandbox: Some(sandbox),
            origin,
            libs: b.libraries.clone(),
        })
    }

    fn sandbox(&mut self) -> Result<&mut S, SessionError> {
        self.sandbox.as_mut().ok_or(SessionError::Closed)
    }

    /// Moves the session to a sandbox whose image also has `libs` (a template image built
    /// in the prepare phase); the workdir's files come along.
    async fn add_libraries(
        &mut self,
        b: &SessionBuilder,
        libs: &[String],
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let missing: Vec<String> = libs
            .iter()
            .filter(|l| !self.libs.contains(l))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut all = self.libs.clone();
        all.extend(missing);
        let mut next = S::start(&self.origin, b, &all, cancel).await?;
        if let Some(mut old) = self.sandbox.take() {
            let files = old.get_tar(".", b.limits.disk, cancel).await;
            old.remove().await;
            let files = files?;
            next.put_tar(&files, cancel).await?;
        }
        self.sandbox = Some(next);
        self.libs = all;
        Ok(())
    }

    async fn exec_in(
        &mut self,
        b: &SessionBuilder,
        steps: Vec<Step>,
        stdin: Input,
        live: Option<ChunkSender>,
        discard: bool,
        cancel: &CancellationToken,
    ) -> Result<ExecOutput, SessionError> {
        let env = crate::backend::container_job::base_env(b.lang, &b.env, true);
        let s = self.sandbox()?;
        let mut stdin = Some(stdin);
        let mut out = ExecOutput::default();
        for step in steps {
            let run = step.kind == StepKind::Run;
            // A streamed step is not measured: the figures' trailer would reach the reader.
            let measure = (run && live.is_none()).then(Measure::new);
            let mut io_live = Live::default();
            let mut bytes = None;
            if run {
                match stdin.take().unwrap_or(Input::None) {
                    Input::Stream(rx) => io_live.stdin = Some(rx),
                    other => bytes = Some(other.all().await.unwrap_or_default()),
                }
                io_live.tx = live.clone();
                io_live.discard = discard;
            }
            let io = StepIo {
                lang: b.lang,
                env: &env,
                open_files: b.limits.open_files,
                stdin: run.then(|| bytes.as_deref().unwrap_or(&[])),
                inputs: &mut None,
                measure: measure.as_ref(),
                live: io_live,
            };
            let mut r = s.run_step(&step, io, cancel).await?;
            if r.cancelled {
                return Err(SessionError::Interrupted);
            }
            if let Some(m) = &measure {
                out.cpu_ms = m.take(&mut r.stderr).map(|u| u.cpu_ms);
                cap_again(&mut r, step.capture_cap);
            }
            if run && discard {
                r.stdout.clear();
                r.stderr.clear();
            }
            if !fold_step(&mut out, step.kind, &r) {
                return Ok(out);
            }
        }
        Ok(out)
    }

    async fn copy_out_in(
        &mut self,
        rel: &Path,
        dest: &Path,
        cap: u64,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let shown = rel.display().to_string();
        let tar = self
            .sandbox()?
            .get_tar(&shown, cap, cancel)
            .await
            .map_err(|e| SessionError::BadPath(shown.clone(), e.to_string()))?;
        let tmp = tempfile::tempdir()?;
        let x = tarball::extract(tar.as_slice(), tmp.path(), cap)?;
        if let Some((_, why)) = x.refused.iter().find(|(p, _)| *p == shown) {
            return Err(SessionError::BadPath(shown, why.clone()));
        }
        if !x.files.contains(&shown) {
            return Err(SessionError::BadPath(shown, "not a regular file".into()));
        }
        std::fs::copy(tmp.path().join(rel), dest)?;
        Ok(())
    }

    async fn take_plots_in(
        &mut self,
        cap: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<crate::plots::Plot>, SessionError> {
        let dir = crate::plots::PLOTS_DIR;
        let s = self.sandbox()?;
        // No plots (or a link the sandbox planted, which is never followed).
        let Ok(tar) = s.get_tar(dir, cap, cancel).await else {
            return Ok(vec![]);
        };
        let tmp = tempfile::tempdir()?;
        tarball::extract(tar.as_slice(), tmp.path(), cap)?;
        let plots = crate::plots::read_dir_safely(tmp.path(), cap)?;
        let rm: Vec<String> = ["rm", "-rf", "--", dir]
            .iter()
            .map(|s| s.to_string())
            .collect();
        s.exec(&rm, None, 1 << 12, Duration::from_secs(30), cancel)
            .await?;
        Ok(plots)
    }
}

/// Takes one step's result into the session's output (the last step's status and output
/// win). False when the steps stop here: a compile step failed, and its merged output
/// becomes `compile_output` and `stderr`.
fn fold_step(out: &mut ExecOutput, kind: StepKind, r: &ExecResult) -> bool {
    out.duration += r.duration;
    out.exit_code = r.exit_code.map(|c| c as i32);
    out.timed_out = r.timed_out;
    out.signal = crate::backend::container_job::signal_of_exit(out.exit_code);
    out.stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    out.stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    out.output_truncated = r.output_limit_hit || r.stdout_truncated || r.stderr_truncated;
    if kind == StepKind::Compile && (r.exit_code != Some(0) || r.timed_out) {
        let mut all = r.stdout.clone();
        all.extend_from_slice(&r.stderr);
        let text = String::from_utf8_lossy(&all).into_owned();
        out.compile_output = Some(text.clone());
        out.stderr = text;
        out.stdout.clear();
        return false;
    }
    true
}

impl<S: SessionContainer> SessionSandbox for ContainerSession<S> {
    fn program<'a>(
        &'a mut self,
        b: &'a SessionBuilder,
        source: &'a str,
        code: &'a str,
        args: &'a [String],
        libs: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, Vec<Step>> {
        Box::pin(async move {
            self.add_libraries(b, libs, cancel).await?;
            let tar = tarball::build(&[(source.to_string(), code.as_bytes().to_vec(), 0o644)])?;
            self.sandbox()?.put_tar(&tar, cancel).await?;
            Ok(crate::backend::container_job::steps(
                b.lang, source, code, &b.limits, b.timeout, args, true,
            ))
        })
    }

    fn exec<'a>(
        &'a mut self,
        b: &'a SessionBuilder,
        steps: Vec<Step>,
        stdin: Input,
        live: Option<ChunkSender>,
        discard: bool,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ExecOutput> {
        Box::pin(self.exec_in(b, steps, stdin, live, discard, cancel))
    }

    fn copy_in<'a>(
        &'a mut self,
        src: &'a Path,
        rel: &'a Path,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ()> {
        Box::pin(async move {
            use std::os::unix::fs::PermissionsExt;
            let data = std::fs::read(src)?;
            let mode = std::fs::metadata(src)?.permissions().mode() & 0o755 | 0o644;
            let tar = tarball::build(&[(rel.display().to_string(), data, mode)])?;
            Ok(self.sandbox()?.put_tar(&tar, cancel).await?)
        })
    }

    fn copy_out<'a>(
        &'a mut self,
        rel: &'a Path,
        dest: &'a Path,
        cap: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ()> {
        Box::pin(self.copy_out_in(rel, dest, cap, cancel))
    }

    fn take_plots<'a>(
        &'a mut self,
        cap: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, Vec<crate::plots::Plot>> {
        Box::pin(self.take_plots_in(cap, cancel))
    }

    fn close(&mut self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            if let Some(s) = self.sandbox.take() {
                s.remove().await;
            }
            S::finish(&self.origin).await;
            Ok(())
        })
    }

    fn abandon(&mut self) {
        if let Some(s) = self.sandbox.take() {
            s.abandon();
        }
    }
}

/// Docker and Podman: the engine and the image without libraries.
pub(super) struct Images {
    engine: Arc<docker::engine::Engine>,
    base: String,
}

impl SessionContainer for Container {
    type Origin = Images;

    async fn start(
        origin: &Images,
        b: &SessionBuilder,
        libs: &[String],
        cancel: &CancellationToken,
    ) -> Result<Container, SessionError> {
        let image = if libs.is_empty() {
            origin.base.clone()
        } else {
            docker::template(
                &origin.engine,
                &origin.base,
                b.lang,
                libs,
                &[],
                b.keep_template,
                cancel,
            )
            .await?
        };
        let spec = docker::container::ContainerSpec {
            image,
            user: "0:0".into(),
            env: crate::backend::container_job::base_env(b.lang, &b.env, true),
            limits: b.limits.clone(),
            network: b.network,
            hardened: true,
            cpu_seconds: None,
            kind: "session",
            name: crate::backend::native::sandbox_id(),
            maintenance_caps: false,
            agent: None,
            preload: None,
        };
        let mut c = Container::start(origin.engine.clone(), &spec).await?;
        c.keep_on_timeout = true;
        Ok(c)
    }

    async fn finish(origin: &Images) {
        origin.engine.finish_session().await;
    }

    /// The container stops by itself as soon as its keep-alive stream closes (dropped).
    fn abandon(self) {}
}

/// Opens a session in a container of `b`'s engine (Docker or Podman).
pub(super) async fn open_docker(
    b: &mut SessionBuilder,
    cancel: &CancellationToken,
) -> Result<ContainerSession<Container>, SessionError> {
    let kind = b.backend;
    let engine = match b.client.take() {
        Some(c) => docker::engine::from_client(c, kind, &b.scope).await,
        None => {
            let base = std::env::current_dir().unwrap_or_default();
            let ep = if kind == BackendKind::Podman {
                docker::engine::Endpoint::resolve_podman(b.podman_socket.as_deref(), &base)
                    .map(|(e, _)| e)
            } else {
                docker::engine::Endpoint::resolve(b.docker_host.as_deref(), b.tls.as_ref(), &base)
            }?;
            docker::engine::connect(&b.scope, &ep, kind).await
        }
    }?;
    let dockerfile = b
        .dockerfile
        .as_deref()
        .map(std::path::absolute)
        .transpose()?;
    let base = docker::base_image(
        &engine,
        dockerfile.as_deref(),
        b.image.as_deref(),
        b.lang,
        b.keep_template,
    )
    .await?;
    ContainerSession::open(Images { engine, base }, b, cancel).await
}

/// Kubernetes: the cluster and the image.
pub(super) struct Cluster {
    cluster: Arc<kubernetes::Cluster>,
    image: String,
}

impl SessionContainer for SandboxPod {
    type Origin = Cluster;

    async fn start(
        origin: &Cluster,
        b: &SessionBuilder,
        libs: &[String],
        cancel: &CancellationToken,
    ) -> Result<SandboxPod, SessionError> {
        if !libs.is_empty() {
            return Err(SessionError::Engine(format!(
                "libraries {libs:?}: not supported on the kubernetes backend (use an image that has them)"
            )));
        }
        let name = crate::backend::native::sandbox_id();
        let owner = kubernetes::owner_labels(&origin.cluster);
        let spec = kubernetes::pod::build(&kubernetes::pod::PodParams {
            name: &name,
            image: &origin.image,
            limits: &b.limits,
            network: b.network,
            kind: "session",
            job_name: None,
            deadline_secs: None,
            owner: &owner,
            manifest: None,
        })?;
        let ns = origin.cluster.namespace.clone();
        Ok(SandboxPod::start(
            origin.cluster.clone(),
            &ns,
            spec,
            kubernetes::DEFAULT_START_TIMEOUT,
            cancel,
        )
        .await?)
    }

    async fn finish(_: &Cluster) {}

    fn abandon(self) {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move { self.delete().await });
        }
    }
}

/// Opens a session in a pod of `b`'s cluster.
pub(super) async fn open_kube(
    b: &mut SessionBuilder,
    cancel: &CancellationToken,
) -> Result<ContainerSession<SandboxPod>, SessionError> {
    if b.dockerfile.is_some() {
        return Err(SessionError::Engine(
            "`libraries` and `dockerfile` are not supported on the kubernetes backend: use an image that has what the code needs (`image(...)`)".into(),
        ));
    }
    let cluster = match b.kube_client.take() {
        Some(c) => kubernetes::from_client(c, b.namespace.clone(), &b.scope),
        None => {
            let cfg = crate::spec::types::KubernetesConfig {
                namespace: b.namespace.clone(),
                ..Default::default()
            };
            let base = std::env::current_dir().unwrap_or_default();
            kubernetes::connect(&b.scope, Some(&cfg), &base).await?
        }
    };
    let image = b
        .image
        .clone()
        .unwrap_or_else(|| lang::spec(b.lang).default_image.to_string());
    ContainerSession::open(Cluster { cluster, image }, b, cancel).await
}
