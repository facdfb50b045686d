//! The binary as users run it: `validate`, `check` (exit codes, reports in
//! every format, against the schema), `run` (what it serves, where it
//! listens, how it stops), and what its logs never say.

#[path = "../support/mod.rs"]
mod support;

mod commands;
mod habits;
mod image;
mod limits;
mod listener;
mod mqtt;
mod process;
mod pubsub;
mod redis;
mod reload;
mod reports;
mod secrets;
mod secure;
mod sqs;
mod status;
mod templates;
