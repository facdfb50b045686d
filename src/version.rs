//! What chirp was built from: `chirp --version`, `chirp_build_info`.

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision chirp was built from (`build.rs`).
pub const REVISION: &str = env!("CHIRP_BUILD_REVISION");
