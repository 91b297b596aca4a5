//! `meshage completions SHELL` and `meshage man`: shell completions and man pages, both made
//! from clap's description of the command line, so they never fall behind it.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;
use clap_complete::Shell;

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
pub(crate) struct ManArgs {
    /// A command of meshage (`node`, `send`, ...): its own page instead of meshage's.
    command: Option<String>,
}

/// Prints the completion script of `args.shell` for `command`.
pub(crate) fn completions(args: &CompletionsArgs, mut command: clap::Command) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "meshage", &mut out);
    write(&out)
}

/// Prints the man page of `command`, or of its subcommand `args.command`.
pub(crate) fn man(args: &ManArgs, command: clap::Command) -> Result<()> {
    let page = match &args.command {
        None => command,
        Some(name) => {
            let Some(sub) = command.find_subcommand(name) else {
                bail!("no command `{name}`: see `meshage --help`");
            };
            // The page's name and usage say `meshage-node`, as man pages of subcommands do.
            sub.clone()
                .name(format!("meshage-{name}"))
                .bin_name(format!("meshage {name}"))
                .version(env!("MESHAGE_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("cannot render the man page")?;
    write(&out)
}

fn write(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`meshage man | head`) is not an error worth reporting.
    let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
    Ok(())
}
