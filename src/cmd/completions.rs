//! `chirp completions <shell>` and `chirp man`: generated from the same
//! command-line definition the binary parses (`clap_complete`,
//! `clap_mangen`), so they cannot drift from it.

use super::{fatal, out, Cli, Exit};
use clap::CommandFactory;

#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: Args) -> Exit {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "chirp", &mut buf);
    out(&String::from_utf8_lossy(&buf));
    Exit::Ok
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write chirp.1 and a page per subcommand (chirp-run.1, …) into this
    /// directory instead of printing chirp.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// The man pages: `chirp.1` on stdout, or every page into a directory.
pub fn man(args: ManArgs) -> Exit {
    let cmd = Cli::command();
    let written = match &args.dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map(|()| {
                out(&format!("man pages written to {}\n", dir.display()));
            }),
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .map(|()| out(&String::from_utf8_lossy(&buf)))
        }
    };
    match written {
        Ok(()) => Exit::Ok,
        Err(e) => {
            fatal(&format!("cannot write the man pages: {e}"));
            Exit::Usage
        }
    }
}
