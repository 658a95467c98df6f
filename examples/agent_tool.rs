//! The library API as an agent's tool: a function-calling style `run_code` tool (a JSON
//! Schema for the model, a JSON-in/JSON-out call) around [`Session`]. Any model API with
//! tool use (OpenAI, Anthropic, local models) takes `RunCodeTool::definition()` as the
//! tool's declaration and hands the model's arguments to `RunCodeTool::call`.
//!
//! ```console
//! $ cargo build && cargo run --example agent_tool            # native backend
//! $ cargo run --example agent_tool -- docker                 # a container per call
//! ```
//!
//! Without a model at hand, `main` plays the model's part: it issues the tool calls a model
//! would make (a computation, a failing program, a timeout, an unknown language) and
//! prints what the model would read back.

use anyhow::Result;
use llm_sandbox::mcp::parse_language;
use llm_sandbox::{BackendKind, Lang, Session};
use serde_json::{json, Value};
use std::time::Duration;

/// A sandboxed code-execution tool for an agent.
struct RunCodeTool {
    backend: BackendKind,
    default_timeout: Duration,
    max_timeout: Duration,
}

impl RunCodeTool {
    /// The tool's declaration for the model (OpenAI/Anthropic-style function schema).
    fn definition() -> Value {
        let langs: Vec<&str> = Lang::ALL.iter().map(|l| l.as_str()).collect();
        json!({
            "name": "run_code",
            "description": "Run a complete program in an isolated sandbox (no network, limited time and memory) and get its stdout, stderr and exit code.",
            "parameters": {
                "type": "object",
                "properties": {
                    "code": { "type": "string", "description": "the program's source" },
                    "language": { "type": "string", "enum": langs },
                    "stdin": { "type": "string", "description": "standard input" },
                    "timeout": { "type": "number", "description": "seconds (default 10, at most 60)" }
                },
                "required": ["code", "language"]
            }
        })
    }

    /// Runs one tool call. Errors of any kind come back as `{"error": ...}` for the model
    /// to read: the agent loop never has to handle a failure of its own.
    async fn call(&self, args: &Value) -> Value {
        match self.try_call(args).await {
            Ok(v) => v,
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    async fn try_call(&self, args: &Value) -> Result<Value> {
        let code = args["code"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("`code` (a string) is required"))?;
        let name = args["language"].as_str().unwrap_or_default();
        let lang = parse_language(name).ok_or_else(|| {
            let valid: Vec<&str> = Lang::ALL.iter().map(|l| l.as_str()).collect();
            anyhow::anyhow!("unknown language {name:?}; valid: {}", valid.join(", "))
        })?;
        let timeout = match args["timeout"].as_f64() {
            Some(t) if t > 0.0 => Duration::from_secs_f64(t).min(self.max_timeout),
            _ => self.default_timeout,
        };
        // A fresh session per call: nothing carries over from one call to the next.
        let mut s = Session::builder()
            .lang(lang)
            .backend(self.backend)
            .timeout(timeout)
            .open()
            .await?;
        let stdin = args["stdin"].as_str().map(str::as_bytes);
        let out = s.run_with_stdin(code, &[], stdin).await;
        let plots = s.take_plots().await.unwrap_or_default();
        s.close().await?;
        let out = out?;
        Ok(json!({
            "exit_code": out.exit_code,
            "timed_out": out.timed_out,
            "stdout": out.stdout,
            "stderr": out.stderr,
            "duration_ms": out.duration.as_millis() as u64,
            "plots": plots.iter().map(|p| &p.name).collect::<Vec<_>>(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let backend = match std::env::args().nth(1).as_deref() {
        None | Some("native") => BackendKind::Native,
        Some("docker") => BackendKind::Docker,
        Some(other) => anyhow::bail!("unknown backend {other:?}; valid: native, docker"),
    };
    let tool = RunCodeTool {
        backend,
        default_timeout: Duration::from_secs(10),
        max_timeout: Duration::from_secs(60),
    };
    println!(
        "tool declaration:\n{}\n",
        serde_json::to_string_pretty(&RunCodeTool::definition())?
    );
    // The calls a model would make, and what it reads back.
    let calls = [
        json!({"language": "python", "code": "import math\nprint(sum(math.factorial(n) for n in range(10)))"}),
        json!({"language": "javascript", "code": "const s = require('fs').readFileSync(0, 'utf8'); console.log(s.split(' ').length)", "stdin": "how many words are here"}),
        json!({"language": "python", "code": "print(1/0)"}),
        json!({"language": "python", "code": "while True: pass", "timeout": 1}),
        json!({"language": "cobol", "code": "DISPLAY 'HI'."}),
    ];
    let mut results = Vec::new();
    for args in &calls {
        let r = tool.call(args).await;
        println!("call  {args}\nresult {r}\n");
        results.push(r);
    }
    anyhow::ensure!(results[0]["stdout"] == "409114\n", "{}", results[0]);
    anyhow::ensure!(results[1]["stdout"] == "5\n", "{}", results[1]);
    anyhow::ensure!(
        results[2]["exit_code"] == 1
            && results[2]["stderr"]
                .as_str()
                .is_some_and(|s| s.contains("ZeroDivisionError")),
        "{}",
        results[2]
    );
    anyhow::ensure!(results[3]["timed_out"] == true, "{}", results[3]);
    anyhow::ensure!(
        results[4]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown language")),
        "{}",
        results[4]
    );
    println!("every call behaved as expected");
    Ok(())
}
