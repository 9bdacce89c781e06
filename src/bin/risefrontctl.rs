//! `risefrontctl upgrade PID`: asks the risefront front with that process id for a new
//! generation and waits for the outcome, running none of the app's code.
//!
//! For systemd's `ExecReload=` on any version (252 included), where running the app with
//! `RISEFRONT_UPGRADE=1` would execute its `main` up to `bind` on every reload:
//!
//! ```ini
//! ExecReload=/usr/local/bin/risefrontctl upgrade $MAINPID
//! ```
//!
//! It exits 0 once the new generation serves (and the old one stopped accepting), 1 if the
//! upgrade failed or no front answers, 2 on a bad command line. Run it as the service's user.
//!
//! `risefrontctl reexec PID` has the front re-execute itself into the build that serves,
//! keeping its pid, sockets and generation (after a deploy of a newer risefront).
//! Linux only (the front's control socket is found in `/proc`).

use std::process::ExitCode;

const USAGE: &str = "usage: risefrontctl upgrade PID   (the front's process id; systemd: $MAINPID)
       risefrontctl reexec PID    (the front runs the serving build's risefront, same pid)";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (reexec, pid) = match args.as_slice() {
        [command, pid] if command == "upgrade" || command == "reexec" => match pid.parse::<u32>() {
            Ok(pid) if pid > 0 => (command == "reexec", pid),
            _ => {
                eprintln!("risefrontctl: not a process id: {pid:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        [help] if help == "--help" || help == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if reexec {
        return match risefront::reexec_front_pid(pid).await {
            Ok(generation) => {
                println!("risefront: the front re-executed; generation {generation} is serving");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    match risefront::upgrade_pid(pid).await {
        Ok(generation) => {
            println!("risefront: upgraded: generation {generation} is serving");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
