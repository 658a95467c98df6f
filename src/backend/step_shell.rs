//! The one shell prologue of a step run as an exec (Docker and Podman containers without
//! the agent, Kubernetes pods, sessions): `/bin/sh -c SCRIPT sh [VAR=value…] ARGV…`.
//! What it can do, each part only when asked ([`StepShell`]): unpack inputs that travel in
//! the environment, enter the workdir, set the open-files and CPU-time limits, give the
//! program only the job's environment (`env -i`: a pod's exec cannot set variables), and
//! measure the run step ([`Measure`]): then the program runs as the shell's child instead
//! of replacing it, and the shell appends its CPU time to stderr after it (`times`: the
//! rusage of the children it waited for, as the native init and the agent read it), which
//! [`Measure::take`] cuts off again. The peak memory of such sandboxes is their cgroup's,
//! read by the end-of-job script ([`crate::backend::clean::SCRIPT`]).

use crate::sandbox::usage::Usage;

/// Inputs up to this size (a tar) may travel base64-encoded in the first step's
/// environment ([`StepShell::inline_input`]).
pub const INLINE_INPUT_MAX: usize = 64 << 10;
/// The variable that carries them.
pub const INLINE_VAR: &str = "LLM_SANDBOX_IN";
/// The exit status of a shell that could not unpack them, and what it says on stderr.
pub const UNPACK_FAILED: i64 = 125;
pub const UNPACK_MARK: &str = "llm-sandbox: cannot unpack the job's files";

/// What the prologue does before running the program.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepShell<'a> {
    /// Unpack `$LLM_SANDBOX_IN` (a base64 tar) into `/sandbox` first.
    pub inline_input: bool,
    /// `cd /sandbox` (an exec API without a working directory).
    pub workdir: bool,
    /// `ulimit -n`.
    pub open_files: Option<u64>,
    /// `ulimit -t` (seconds: the soft limit; the hard one a second more).
    pub cpu_seconds: Option<u64>,
    /// The program's whole environment (`env -i`, the image's PATH kept unless set here):
    /// for an exec API that cannot pass variables.
    pub env: Option<&'a [(String, String)]>,
    /// Report the step's resource figures on stderr.
    pub measure: Option<&'a Measure>,
}

impl StepShell<'_> {
    /// The exec's argv running `argv` behind this prologue (`argv` itself when there is
    /// nothing to do).
    pub fn argv(&self, argv: &[String]) -> Vec<String> {
        let mut script = String::new();
        if self.inline_input {
            script.push_str(&format!(
                "printf '%s' \"${INLINE_VAR}\" | base64 -d | tar -x --no-same-owner -m -C /sandbox -f - || {{ echo \"{UNPACK_MARK}\" >&2; exit {UNPACK_FAILED}; }}; unset {INLINE_VAR}; "
            ));
        }
        if self.workdir {
            script.push_str("cd /sandbox 2>/dev/null; ");
        }
        if let Some(n) = self.open_files {
            script.push_str(&format!("ulimit -n {n} 2>/dev/null; "));
        }
        if let Some(cpu) = self.cpu_seconds {
            // SIGXCPU at the limit (unambiguous in the report), SIGKILL a second later.
            script.push_str(&format!(
                "ulimit -H -t {} 2>/dev/null; ulimit -S -t {cpu} 2>/dev/null; ",
                cpu + 1
            ));
        }
        if script.is_empty() && self.env.is_none() && self.measure.is_none() {
            return argv.to_vec();
        }
        let run = if self.env.is_some() {
            "env -i PATH=\"$PATH\" \"$@\""
        } else {
            "\"$@\""
        };
        match self.measure {
            None => script.push_str(&format!("exec {run}")),
            Some(m) => script.push_str(&format!(
                "{run}; s=$?; printf '\\n{} ' >&2; times >&2; exit $s",
                m.mark
            )),
        }
        let mut a: Vec<String> = vec!["/bin/sh".into(), "-c".into(), script, "sh".into()];
        if let Some(env) = self.env {
            a.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        a.extend(argv.iter().cloned());
        a
    }
}

/// How many bytes the figures add to stderr at most: an exec that measures may capture
/// this much more, and [`Measure::take`] applies the job's own cap again.
pub const TRAILER_MAX: u64 = 256;

/// The resource figures of one measured step: a mark of its own in the line the shell
/// appends, so that only that line is cut off (a program printing a line like it only
/// fools its own report).
#[derive(Debug, Clone)]
pub struct Measure {
    mark: String,
}

impl Default for Measure {
    fn default() -> Self {
        Self::new()
    }
}

impl Measure {
    pub fn new() -> Measure {
        Measure {
            mark: format!("llm-sandbox-usage-{:016x}", random()),
        }
    }

    /// The line the shell appends for a step that used `user` and `sys` (POSIX `times`
    /// format, e.g. `0m0.250s`): what a test double of a sandbox says.
    #[cfg(test)]
    pub(crate) fn trailer(&self, user: &str, sys: &str) -> String {
        format!("\n{} 0m0.000s 0m0.000s\n{user} {sys}\n", self.mark)
    }

    /// Cuts the figures off the end of `stderr` and reads them (the peak memory is left
    /// at 0: the shell cannot see it).
    pub fn take(&self, stderr: &mut Vec<u8>) -> Option<Usage> {
        let needle = format!("\n{} ", self.mark);
        let at = find_last(stderr, needle.as_bytes())?;
        let tail = String::from_utf8_lossy(&stderr[at + needle.len()..]).into_owned();
        stderr.truncate(at);
        parse(&tail)
    }
}

/// 64 random bits from the kernel (a time-based value where getrandom fails).
fn random() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom into a u64.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        v = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    v
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    (0..=hay.len().checked_sub(needle.len())?)
        .rev()
        .take(TRAILER_MAX as usize * 2)
        .find(|&i| hay[i..].starts_with(needle))
}

/// POSIX `times`: `SELF_USER SELF_SYS\nCHILDREN_USER CHILDREN_SYS\n` (`XmY.Zs`).
fn parse(tail: &str) -> Option<Usage> {
    let mut words = tail.split_whitespace();
    let (_, _) = (words.next()?, words.next()?);
    let user = seconds(words.next()?)?;
    let sys = seconds(words.next()?)?;
    Some(Usage {
        cpu_ms: ((user + sys) * 1000.0).round() as u64,
        peak_memory_bytes: 0,
    })
}

/// `1m2.345s` → 62.345.
fn seconds(t: &str) -> Option<f64> {
    let t = t.strip_suffix('s')?;
    let (m, s) = t.split_once('m').unwrap_or(("0", t));
    Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv() -> Vec<String> {
        vec!["python3".to_string(), "a b".to_string()]
    }

    #[test]
    fn nothing_to_do_keeps_argv() {
        assert_eq!(StepShell::default().argv(&argv()), argv());
    }

    #[test]
    fn the_prologue_sets_limits_and_execs() {
        let w = StepShell {
            inline_input: true,
            cpu_seconds: Some(3),
            ..Default::default()
        }
        .argv(&argv());
        assert_eq!(&w[..2], &["/bin/sh", "-c"]);
        assert!(
            w[2].contains("base64 -d")
                && w[2].contains("ulimit -H -t 4")
                && w[2].contains("ulimit -S -t 3")
        );
        assert!(w[2].ends_with("exec \"$@\""));
        assert_eq!(&w[3..], &["sh", "python3", "a b"]);
    }

    #[test]
    fn an_environment_of_its_own_clears_the_exec_s() {
        let env = vec![("K".to_string(), "v w".to_string())];
        let w = StepShell {
            workdir: true,
            open_files: Some(64),
            env: Some(&env),
            ..Default::default()
        }
        .argv(&argv());
        assert!(w[2].starts_with("cd /sandbox") && w[2].contains("ulimit -n 64"));
        assert!(w[2].ends_with("exec env -i PATH=\"$PATH\" \"$@\""));
        assert_eq!(&w[3..], &["sh", "K=v w", "python3", "a b"]);
    }

    #[test]
    fn measured_figures_are_read_and_cut_off() {
        let m = Measure::new();
        let w = StepShell {
            measure: Some(&m),
            ..Default::default()
        }
        .argv(&argv());
        assert!(w[2].contains("times >&2; exit $s") && !w[2].contains("exec "));
        let mut err = format!(
            "warning: x\nfake {} 0m0.00s 0m0.00s\n0m9.00s 0m0.00s\n\n{} 0m0.01s 0m0.00s\n0m0.48s 0m0.03s\n",
            m.mark, m.mark
        )
        .into_bytes();
        let u = m.take(&mut err).unwrap();
        assert_eq!(u.cpu_ms, 510);
        assert!(String::from_utf8_lossy(&err).ends_with("0m0.00s\n0m9.00s 0m0.00s\n"));
        // bash's `times`.
        assert_eq!(
            parse("0m0.000s 0m0.000s\n1m2.500s 0m0.250s\n"),
            Some(Usage {
                cpu_ms: 62750,
                peak_memory_bytes: 0
            })
        );
        assert_eq!(m.take(&mut b"no figures".to_vec()), None);
    }
}
