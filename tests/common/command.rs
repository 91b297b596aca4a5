//! The `meshage` binary cargo built for these tests, run with a clean environment.

use std::process::Command;

/// The `meshage` binary cargo built for these tests.
pub const MESHAGE: &str = env!("CARGO_BIN_EXE_meshage");

/// A command for the `meshage` binary with none of the caller's configuration variables.
pub fn meshage_command() -> Command {
    let mut command = Command::new(MESHAGE);
    command
        .env_clear()
        .env("RUST_LOG", "info,chitchat=warn")
        .env("NO_COLOR", "1");
    command
}
