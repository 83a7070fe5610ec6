//! One style for the terminal: whether to colour, and the few marks used.

use std::io::IsTerminal;

/// Output styling decided once per run.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Emit ANSI colours.
    pub color: bool,
}

impl Style {
    /// Colour only on a terminal, and never when `NO_COLOR` is set.
    pub fn for_stdout() -> Style {
        Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    /// No colour (files, tests).
    pub fn plain() -> Style {
        Style { color: false }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }

    /// Something that passed.
    pub fn good(&self, s: &str) -> String {
        self.paint("32", s)
    }

    /// Something that failed.
    pub fn bad(&self, s: &str) -> String {
        self.paint("1;31", s)
    }

    /// A warning.
    pub fn warn(&self, s: &str) -> String {
        self.paint("33", s)
    }

    /// De-emphasised text.
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// The mark for a passed check.
pub const PASS: &str = "ok";
/// The mark for a failed check.
pub const FAIL: &str = "FAIL";
