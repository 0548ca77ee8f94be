//! `llm-script-server --script answers.json [--port 0] [--record requests.jsonl]`

use clap::Parser;
use llm_script_server::{Options, Script, start_with};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Scripted stand-in for LLM providers (OpenAI chat completions, Anthropic messages).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// JSON script: an array of entries, or {"responses": [...]}.
    #[arg(long)]
    script: PathBuf,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Append every received request to this file as JSON lines.
    #[arg(long)]
    record: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let script = match Script::from_file(&args.script) {
        Ok(script) => script,
        Err(e) => {
            eprintln!("llm-script-server: {e}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        port: args.port,
        record: args.record,
    };
    let running = match start_with(script, options).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("llm-script-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Callers parse this first line to learn the port when they asked for 0.
    println!("listening on {}", running.url());
    let _ = std::io::stdout().flush();
    match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-script-server: serving: {e}");
            ExitCode::FAILURE
        }
    }
}
