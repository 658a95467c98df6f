//! One hardened container: created and started once, commands exec'd into it, files in and
//! out as tar streams, removed at the end. Its main process (under the engine's init) reads
//! the runner's attached stdin: when the runner goes away, even by SIGKILL, the stream
//! closes and the container stops by itself.

use super::engine::Engine;
use crate::backend::container_job::{ExecResult, Live};
use crate::backend::error::error_chain;
use crate::backend::Error;
use crate::plan::job::ResolvedLimits;
use crate::stream::StdStream;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The workdir inside every sandbox.
pub const WORKDIR: &str = "/sandbox";

/// How a container is made.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: String,
    /// `uid:gid`; the prepare phase runs as `0:0`.
    pub user: String,
    pub env: Vec<(String, String)>,
    pub limits: ResolvedLimits,
    pub network: bool,
    /// Hardened (the run phase) or the prepare phase (root, network, writable root).
    pub hardened: bool,
    /// CPU-time limit of every process (seconds); none for the prepare phase.
    pub cpu_seconds: Option<u64>,
    pub kind: &'static str,
    pub name: String,
    /// Warm containers keep KILL, DAC_OVERRIDE and FOWNER in the bounding set for the
    /// cleanup exec, which runs as root: the sandbox user's processes get no capability
    /// (non-root, no-new-privileges) and cannot trace or signal that root process.
    pub maintenance_caps: bool,
    /// Warm containers on a local engine: this binary, bind-mounted read-only at
    /// [`AGENT_PATH`] and started as the container's job agent.
    pub agent: Option<std::path::PathBuf>,
    /// Preloaded Python (README, "Preloaded Python"): the start-up variables of a Python
    /// job, with which the agent initialises the image's CPython when it starts, before any
    /// job ran in the container.
    pub preload: Option<super::agent::AgentPreload>,
}

/// Where the agent binary appears inside a container.
pub const AGENT_PATH: &str = "/.llm-sandbox/agent";

/// The runner's end of a container's agent: the container's attach stream.
struct AgentConn {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: AgentOutput,
}

/// What the agent writes (its stdout), read frame by frame ([`super::frame::Source`]).
struct AgentOutput {
    stream:
        Pin<Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    buf: Vec<u8>,
}

/// A running sandbox container.
pub struct Container {
    pub engine: Arc<Engine>,
    pub id: String,
    /// Holding it keeps the container alive; dropping it stops the container (the agent's
    /// input does the same when the agent is the container's process).
    keepalive: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    removed: bool,
    /// The container was killed (timeout, output limit, cancel): nothing more runs in it.
    pub dead: bool,
    /// Its pids limit (processes and threads).
    pub pids_limit: i64,
    /// The job agent (the container's own process), when the container has one.
    agent: Option<AgentConn>,
    /// What it keeps between jobs (warm containers).
    pub reuse: crate::backend::container_job::Reuse,
    /// Sessions: a timeout or an output flood kills the sandbox user's processes, not the
    /// container (its workdir lives on).
    pub keep_on_timeout: bool,
    /// Podman: the tmpfs volumes of its `/sandbox` and `/tmp`, removed with it.
    volumes: Vec<String>,
}

/// The process rlimit of Podman containers: this host's hard limit, at most 32768 (what
/// `podman system service` keeps for itself).
fn podman_nproc() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        .map(|(_, h)| h)
        .unwrap_or(32768);
    hard.clamp(256, 32768)
}

/// The open-files rlimit of Podman's prepare containers (its default is above this host's
/// hard limit too).
fn podman_nofile() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(4096);
    hard.clamp(256, 4096)
}

fn ulimit(name: &str, v: u64) -> ResourcesUlimits {
    ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(v as i64),
        hard: Some(v as i64),
    }
}

impl Container {
    /// Creates and starts a container (its start-up is paid once; every step execs into it).
    pub async fn start(engine: Arc<Engine>, spec: &ContainerSpec) -> Result<Container, Error> {
        let l = &spec.limits;
        let podman = engine.kind == crate::spec::types::BackendKind::Podman;
        if let Some(why) = engine.limits_unenforced.as_ref().filter(|_| spec.hardened) {
            return Err(Error::Unavailable(why.clone()));
        }
        // The agent is the container's init (pid 1): it reaps every orphan after each step
        // (it is their reaper either way), and no process of the container can signal it.
        // The keep-alive `cat` reaps nothing, so a container without the agent gets the
        // engine's init (the orphans of its execs are reaped). An init costs the engine
        // about 8 ms more per start.
        let init = spec.agent.is_none();
        // The job's processes, the init and the container's own process (the keep-alive or
        // the agent).
        let pids_limit = l.pids as i64 + 1 + i64::from(init);
        let mut host = HostConfig {
            init: Some(init),
            network_mode: Some(if spec.network { "bridge" } else { "none" }.into()),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        };
        let mut volumes = Vec::new();
        if spec.hardened {
            let mut tmpfs = HashMap::new();
            if podman {
                // Podman 4 takes neither `nr_inodes` nor `uid` for tmpfs mounts and
                // ignores `mode`: its named volumes of the local driver pass every tmpfs
                // option to mount(2), so /sandbox and /tmp are such volumes (removed with
                // the container). Its automatic writable /run and /var/tmp of read-only
                // containers are covered read-only, as docker's are.
                let blocks = l.disk.div_ceil(4096).max(1);
                let inodes = (l.disk / 4096).clamp(1024, 1 << 20);
                for (dest, owner) in [
                    (
                        WORKDIR,
                        format!(
                            "uid={uid},gid={uid},mode=0755",
                            uid = crate::backend::tarball::SANDBOX_UID
                        ),
                    ),
                    ("/tmp", "mode=1777".to_string()),
                ] {
                    let name = format!("{}{}", spec.name, dest.replace('/', "-"));
                    engine
                        .create_tmpfs_volume(
                            &name,
                            &format!("nosuid,nodev,nr_blocks={blocks},nr_inodes={inodes},{owner}"),
                        )
                        .await?;
                    volumes.push(name.clone());
                    host.binds
                        .get_or_insert_with(Vec::new)
                        .push(format!("{name}:{dest}:rw"));
                }
                for dest in ["/run", "/var/tmp"] {
                    tmpfs.insert(
                        dest.to_string(),
                        "ro,nosuid,nodev,noexec,size=16k".to_string(),
                    );
                }
            } else {
                let inodes = (l.disk / 4096).clamp(1024, 1 << 20);
                tmpfs.insert(
                    WORKDIR.to_string(),
                    format!("rw,exec,nosuid,nodev,size={},nr_inodes={inodes},mode=0755,uid={uid},gid={uid}", l.disk, uid = crate::backend::tarball::SANDBOX_UID),
                );
                tmpfs.insert(
                    "/tmp".to_string(),
                    format!(
                        "rw,exec,nosuid,nodev,size={},nr_inodes={inodes},mode=1777",
                        l.disk
                    ),
                );
            }
            host.cap_drop = Some(vec!["ALL".into()]);
            if spec.maintenance_caps {
                let mut caps = vec!["KILL", "DAC_OVERRIDE", "FOWNER"];
                if spec.agent.is_some() {
                    // The agent starts each step as the sandbox user and hands it the files.
                    caps.extend(["SETUID", "SETGID", "CHOWN"]);
                }
                host.cap_add = Some(caps.into_iter().map(String::from).collect());
            }
            if let Some(bin) = &spec.agent {
                host.binds
                    .get_or_insert_with(Vec::new)
                    .push(format!("{}:{AGENT_PATH}:ro", bin.display()));
            }
            let mut sec = vec!["no-new-privileges".to_string()];
            // The project's profile (super::seccomp): Docker takes its JSON, Podman a path on
            // its own machine (so only a local Podman gets it).
            if !podman {
                sec.push(format!("seccomp={}", super::seccomp::profile()));
            } else if engine.local && engine.endpoint.starts_with("unix://") {
                if let Some(p) = super::seccomp::local_profile_path() {
                    sec.push(format!("seccomp={}", p.display()));
                }
            }
            host.security_opt = Some(sec);
            host.readonly_rootfs = Some(true);
            // No TIME_WAIT in the container's network namespace: a connection a job closed
            // must not keep its port from the next job of a warm container.
            host.sysctls = Some(HashMap::from([(
                "net.ipv4.tcp_max_tw_buckets".to_string(),
                "0".to_string(),
            )]));
            host.tmpfs = Some(tmpfs);
            host.shm_size = Some(l.disk.min(i64::MAX as u64) as i64);
            host.ipc_mode = Some("private".into());
            host.memory = Some(l.memory as i64);
            host.memory_swap = Some(l.memory as i64);
            host.nano_cpus = Some((l.cpus * 1e9) as i64);
            host.pids_limit = Some(pids_limit);
            let mut ul = vec![ulimit("nofile", l.open_files)];
            if podman {
                // Podman's default process rlimit is above the hard limit its service may
                // set (runc then fails to start the container): set one explicitly. It
                // counts the sandbox uid's processes host-wide, so it is a backstop only;
                // the pids cgroup limit is the per-container bound.
                ul.push(ulimit("nproc", podman_nproc()));
            }
            if let Some(cpu) = spec.cpu_seconds {
                ul.push(ulimit("cpu", cpu));
            }
            host.ulimits = Some(ul);
            host.oom_score_adj = Some(500);
        } else {
            host.pids_limit = Some(4096);
            if podman {
                host.ulimits = Some(vec![
                    ulimit("nproc", podman_nproc()),
                    ulimit("nofile", podman_nofile()),
                ]);
            }
        }
        // With an agent, it is the container's own process (its init, as root, the
        // container's capabilities): no exec to start it (an exec costs this engine 30–50 ms).
        // Without, `cat` keeps the container alive until its stdin closes.
        let agent = spec.agent.is_some();
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if agent {
            env.push("LLM_SANDBOX_AGENT=1".into());
            if let Some(p) = &spec.preload {
                env.push(format!(
                    "{}={}",
                    super::agent::PRELOAD_ENV,
                    serde_json::to_string(p).unwrap_or_default()
                ));
            }
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(if agent {
                "0:0".into()
            } else {
                spec.user.clone()
            }),
            env: Some(env),
            entrypoint: Some(if agent {
                vec![AGENT_PATH.into(), super::agent::SUBCOMMAND.into()]
            } else {
                vec!["cat".into()]
            }),
            cmd: Some(vec![]),
            working_dir: Some(if spec.hardened { WORKDIR } else { "/" }.into()),
            hostname: Some("sandbox".into()),
            labels: Some(engine.labels(spec.kind)),
            attach_stdin: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            network_disabled: Some(!spec.network),
            host_config: Some(host),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = match engine.docker.create_container(Some(opts), body).await {
            Ok(c) => c,
            Err(e) => {
                engine.remove_volumes(&volumes).await;
                return Err(Error::Engine(format!(
                    "cannot create a container from `{}` on {}: {}",
                    spec.image,
                    engine.endpoint,
                    error_chain(&e)
                )));
            }
        };
        let mut c = Container {
            engine: engine.clone(),
            id: created.id,
            keepalive: None,
            removed: false,
            dead: false,
            pids_limit,
            agent: None,
            reuse: Default::default(),
            keep_on_timeout: false,
            volumes,
        };
        let attach = bollard::query_parameters::AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(agent)
            .stderr(agent)
            .stream(true)
            .build();
        let a = engine
            .docker
            .attach_container(&c.id, Some(attach))
            .await
            .map_err(|e| {
                Error::Engine(format!(
                    "cannot attach to container {}: {}",
                    c.id,
                    error_chain(&e)
                ))
            })?;
        let conn = if agent {
            Some(AgentConn {
                input: a.input,
                output: AgentOutput {
                    stream: a.output,
                    buf: Vec::new(),
                },
            })
        } else {
            c.keepalive = Some(a.input);
            drop(a.output);
            None
        };
        engine
            .docker
            .start_container(
                &c.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| {
                Error::Engine(format!(
                    "cannot start a container from `{}`: {}",
                    spec.image,
                    error_chain(&e)
                ))
            })?;
        if let Some(mut conn) = conn {
            match ready(&mut conn).await {
                Ok(()) => c.agent = Some(conn),
                Err(e) => {
                    // An image the binary cannot run in (another libc, say): a container
                    // without an agent instead, one exec per step.
                    tracing::debug!("no agent in a container of {}: {e}", spec.image);
                    drop(conn);
                    c.remove().await;
                    let mut plain = spec.clone();
                    plain.agent = None;
                    return Box::pin(Container::start(engine, &plain)).await;
                }
            }
        }
        Ok(c)
    }

    pub fn has_agent(&self) -> bool {
        self.agent.is_some()
    }

    /// The roots of the writable places, as [`crate::backend::clean::SCRIPT`] sees them.
    pub async fn snapshot_roots(&mut self) -> Result<Vec<crate::backend::clean::Root>, Error> {
        let argv = crate::backend::clean::script_argv("snapshot", false);
        let r = self
            .exec(
                &argv,
                Some("0:0"),
                &[],
                None,
                1 << 16,
                Duration::from_secs(30),
                &CancellationToken::new(),
            )
            .await?;
        Ok(crate::backend::clean::parse(&String::from_utf8_lossy(&r.stderr)).roots)
    }

    /// Runs one job through the agent. On a timeout of the whole exchange, or on cancel,
    /// the container is killed. With `wire`, the job's live step (its run step) is fed
    /// from it and its output goes to it as it comes, until `live_for` has passed (then
    /// what the wire's reader does not take in time is dropped; the agent's own timeout
    /// ends the step).
    pub async fn agent_job(
        &mut self,
        job: super::agent::AgentJob,
        timeout: Duration,
        cancel: &CancellationToken,
        wire: Option<(crate::backend::Wire, Duration)>,
    ) -> Result<super::agent::AgentResult, Error> {
        let conn = self
            .agent
            .as_mut()
            .ok_or_else(|| Error::Protocol("no agent".into()))?;
        // The largest answer the job's limits allow: each step's two streams, the packed
        // files, and the header around them.
        let max: u64 =
            job.steps.iter().map(|s| 2 * s.cap).sum::<u64>() + job.collect_cap + (1 << 20);
        let request = super::frame::encode(job)?;
        let exchange = async {
            send(&mut conn.input, &request).await?;
            if let Some((wire, live_for)) = wire {
                live(conn, wire, live_for).await?;
            }
            super::frame::read::<super::agent::AgentResult, _>(&mut conn.output, max)
                .await?
                .ok_or_else(|| Error::Sandbox("the agent exited".into()))
        };
        let got = tokio::select! {
            r = tokio::time::timeout(timeout, exchange) => r.map_err(|_| Error::Sandbox("the agent did not answer in time".into())),
            _ = cancel.cancelled() => Err(Error::Interrupted),
        };
        match got {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) | Err(e) => {
                self.agent = None;
                self.kill().await;
                Err(e)
            }
        }
    }

    /// Runs `argv` in the container and captures its output (each stream capped at `cap`
    /// bytes: past it, or past `timeout`, or on `cancel`, the container is killed).
    #[allow(clippy::too_many_arguments)]
    pub async fn exec(
        &mut self,
        argv: &[String],
        user: Option<&str>,
        env: &[(String, String)],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        self.exec_live(
            argv,
            user,
            env,
            stdin,
            cap,
            timeout,
            cancel,
            Live::default(),
        )
        .await
    }

    /// Like [`Container::exec`], streaming the output (and maybe stdin) as `live` says.
    #[allow(clippy::too_many_arguments)]
    pub async fn exec_live(
        &mut self,
        argv: &[String],
        user: Option<&str>,
        env: &[(String, String)],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        live: Live,
    ) -> Result<ExecResult, Error> {
        self.exec_inner(argv, user, env, stdin, cap, timeout, cancel, true, live)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_inner(
        &mut self,
        argv: &[String],
        user: Option<&str>,
        env: &[(String, String)],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
        // false for the exec that kills processes itself: on trouble the container goes.
        enforce: bool,
        live: Live,
    ) -> Result<ExecResult, Error> {
        let started = Instant::now();
        let Live {
            tx,
            discard,
            stdin: stdin_live,
        } = live;
        let opts = CreateExecOptions::<String> {
            cmd: Some(argv.to_vec()),
            attach_stdin: Some(stdin.is_some() || stdin_live.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            user: user.map(String::from),
            env: (!env.is_empty()).then(|| env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(WORKDIR.into()),
            ..Default::default()
        };
        let docker = &self.engine.docker;
        let exec = docker.create_exec(&self.id, opts).await.map_err(|e| {
            Error::Engine(format!("cannot exec in the container: {}", error_chain(&e)))
        })?;
        let StartExecResults::Attached { mut output, input } = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| Error::Engine(format!("cannot start the exec: {}", error_chain(&e))))?
        else {
            return Err(Error::Engine("the exec started detached".into()));
        };
        // (Without stdin, its half of the connection is kept, untouched, to the end.)
        let (writer, _input) = match crate::stream::Feed::of(stdin, stdin_live) {
            Some(feed) => (Some(feed.spawn(input)), None),
            None => (None, Some(input)),
        };
        let mut r = ExecResult::default();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tap = crate::backend::container_job::OutputTap::new(cap, discard, tx);
        loop {
            let (stream, message) = tokio::select! {
                item = output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => (StdStream::Stdout, message),
                    Some(Ok(LogOutput::StdErr { message })) => (StdStream::Stderr, message),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(Error::Sandbox(format!("the exec stream broke: {}", error_chain(&e)))),
                    None => break,
                },
                _ = &mut deadline => { r.timed_out = true; break; }
                _ = cancel.cancelled() => { r.cancelled = true; break; }
            };
            if tap
                .pass(&mut r, stream, &message, deadline.as_mut(), cancel)
                .await
            {
                break;
            }
        }
        if let Some(w) = writer {
            w.abort();
        }
        if (r.output_limit_hit || r.timed_out || r.cancelled) && !enforce {
            drop(output);
            self.kill().await;
        } else if r.output_limit_hit || r.timed_out || r.cancelled {
            drop(output);
            if self.keep_on_timeout && !r.cancelled {
                self.kill_processes().await;
            } else {
                self.kill().await;
            }
        } else {
            let info = docker.inspect_exec(&exec.id).await.map_err(|e| {
                Error::Engine(format!("cannot read the exit code: {}", error_chain(&e)))
            })?;
            r.exit_code = info.exit_code;
        }
        r.duration = started.elapsed();
        Ok(r)
    }

    /// Kills every process of the sandbox user (the keep-alive runs as root and stays);
    /// the container itself when that cannot be done.
    pub async fn kill_processes(&mut self) {
        let argv: Vec<String> = vec!["/bin/sh".into(), "-c".into(), "kill -9 -1".into()];
        let never = CancellationToken::new();
        let r = Box::pin(self.exec_inner(
            &argv,
            Some(super::SANDBOX_USER),
            &[],
            None,
            1 << 12,
            Duration::from_secs(10),
            &never,
            false,
            Live::default(),
        ))
        .await;
        if r.is_err() {
            self.kill().await;
        }
    }

    /// Kills every process (the container stops; it can be removed).
    pub async fn kill(&mut self) {
        self.dead = true;
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::default()
            .signal("KILL")
            .build();
        let _ = self
            .engine
            .docker
            .kill_container(&self.id, Some(opts))
            .await;
    }

    /// Removes the container (and whatever still runs in it).
    pub async fn remove(mut self) {
        self.keepalive.take();
        self.agent.take();
        self.removed = true;
        self.engine.remove_container(&self.id).await;
        self.engine.remove_volumes(&self.volumes).await;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Dropped mid-way (cancelled future, panic): closing stdin stops the container;
        // remove it in the background too (the end of the run sweeps what is left).
        self.keepalive.take();
        self.agent.take();
        let engine = self.engine.clone();
        let id = self.id.clone();
        let volumes = std::mem::take(&mut self.volumes);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                engine.remove_container(&id).await;
                engine.remove_volumes(&volumes).await;
            });
        }
    }
}

/// Writes `bytes` to the agent.
async fn send(input: &mut Pin<Box<dyn AsyncWrite + Send>>, bytes: &[u8]) -> Result<(), Error> {
    let sent = async {
        input.write_all(bytes).await?;
        input.flush().await
    };
    sent.await
        .map_err(|e| Error::Sandbox(format!("cannot reach the agent: {e}")))
}

/// A live step's traffic through the agent ([`super::agent::LivePiece`]): the wire's
/// stdin goes to it in pieces (then one `StdinEnd`) while its output pieces go to the
/// wire, up to the agent's `End`.
async fn live(
    conn: &mut AgentConn,
    wire: crate::backend::Wire,
    live_for: Duration,
) -> Result<(), Error> {
    use super::agent::{LiveKind, LivePiece};
    let crate::backend::Wire { mut stdin, output } = wire;
    let until = tokio::time::Instant::now() + live_for;
    let ended = tokio_util::sync::CancellationToken::new();
    let AgentConn {
        input,
        output: from,
    } = conn;
    let piece = |kind, data| super::frame::encode(LivePiece { kind, data });
    // The wire's stdin, until it closes or the step is over; then `StdinEnd`, always.
    let feed = async {
        loop {
            let chunk = tokio::select! {
                c = stdin.recv() => c,
                _ = ended.cancelled() => None,
            };
            let Some(chunk) = chunk else { break };
            for part in chunk.chunks(64 << 10) {
                send(input, &piece(LiveKind::Stdin, part.to_vec())?).await?;
            }
        }
        send(input, &piece(LiveKind::StdinEnd, Vec::new())?).await
    };
    // The output pieces, to the wire while its reader takes them in time.
    let forward = async {
        let mut to = Some(output);
        let result = loop {
            let p = match super::frame::read::<LivePiece, _>(from, super::agent::LIVE_PIECE_MAX)
                .await
            {
                Ok(Some(p)) => p,
                Ok(None) => break Err(Error::Sandbox("the agent exited".into())),
                Err(e) => break Err(e),
            };
            let stream = match p.kind {
                LiveKind::Stdout => StdStream::Stdout,
                LiveKind::Stderr => StdStream::Stderr,
                LiveKind::End => break Ok(()),
                LiveKind::Stdin | LiveKind::StdinEnd => {
                    break Err(Error::Protocol("the agent sent a stdin piece".into()))
                }
            };
            if let Some(tx) = &to {
                let chunk = crate::stream::OutputChunk {
                    stream,
                    data: p.data,
                };
                match tokio::time::timeout_at(until, tx.send(chunk)).await {
                    Ok(Ok(())) => {}
                    // The reader is gone, or too slow: the rest is not handed over.
                    Ok(Err(_)) | Err(_) => to = None,
                }
            }
        };
        ended.cancel();
        result
    };
    let (fed, forwarded) = tokio::join!(feed, forward);
    forwarded.and(fed)
}

/// Waits for the agent's first line ([`super::agent::READY`]): it has initialised (and
/// preloaded what it was asked to) and reads jobs.
async fn ready(conn: &mut AgentConn) -> Result<(), Error> {
    let ready = format!("{}\n", super::agent::READY);
    let said = tokio::time::timeout(
        Duration::from_secs(10),
        super::frame::Source::exact(&mut conn.output, ready.len()),
    )
    .await
    .map_err(|_| Error::Protocol("the agent did not answer within 10s".into()))??
    .unwrap_or_default();
    if said != ready.as_bytes() {
        return Err(Error::Protocol(format!(
            "the agent said {:?}",
            String::from_utf8_lossy(&said)
        )));
    }
    Ok(())
}

impl super::frame::Source for AgentOutput {
    /// From the agent's stdout (its stderr goes to the debug log).
    async fn exact(&mut self, n: usize) -> Result<Option<Vec<u8>>, Error> {
        while self.buf.len() < n {
            match self.stream.next().await {
                Some(Ok(LogOutput::StdOut { message })) => self.buf.extend_from_slice(&message),
                Some(Ok(LogOutput::StdErr { message })) => {
                    tracing::debug!("agent: {}", String::from_utf8_lossy(&message).trim())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(Error::Sandbox(format!(
                        "the agent's stream broke: {}",
                        error_chain(&e)
                    )))
                }
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(Error::Sandbox("the agent exited".into())),
            }
        }
        let rest = self.buf.split_off(n);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}
