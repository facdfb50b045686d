//! A probe: one scheduled stream of canaries from an inject point to a catch
//! point, and the [`ledger::Ledger`] that decides each canary's outcome.
pub mod ledger;
