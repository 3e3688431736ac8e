//! `biomistral chat`: interactive multi-turn chat. `/reset` clears the history, `/exit` quits;
//! Ctrl-C stops the reply being written without ending the session.
use super::common::ModelArgs;
use super::generate::SamplingArgs;
use biomistral::generate::{encode_chat, generate, GenerateRequest, Message, ADVISORY};
use clap::Args;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message put before the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Do not print the research-use advisory.
    #[arg(long)]
    pub no_advisory: bool,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let sampling = args.sampling.params()?;
    let m = args.model.load()?;
    if !args.no_advisory {
        eprintln!("{ADVISORY}");
    }
    eprintln!("Type a message; /reset clears the conversation, /exit quits, Ctrl-C stops a reply.");
    let cancel = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (cancel, generating) = (cancel.clone(), generating.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        })?;
    }
    let base: Vec<Message> = args.system.iter().map(|s| Message::new("system", s)).collect();
    let mut history = base.clone();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = base.clone();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let prompt_ids = match encode_chat(&m, &history) {
            Ok(ids) => ids,
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
                continue;
            }
        };
        let req = GenerateRequest {
            prompt_ids,
            max_new_tokens: args.sampling.max_new_tokens,
            sampling: sampling.clone(),
            stop_strings: vec![],
            eos_ids: m.eos_ids.clone(),
        };
        cancel.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let res = generate(&m, &req, Some(&cancel), |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        });
        generating.store(false, Ordering::SeqCst);
        println!();
        match res {
            Ok(out) => {
                if cancel.load(Ordering::SeqCst) {
                    eprintln!("(stopped)");
                }
                history.push(Message::new("assistant", out.text.trim()));
            }
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
            }
        }
    }
    Ok(())
}
