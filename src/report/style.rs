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

impl Style {
    /// A verdict grade in its colour.
    pub fn grade(&self, g: crate::verdict::Grade) -> String {
        use crate::verdict::Grade;
        match g {
            Grade::Pass => self.good("PASS"),
            Grade::Warn => self.warn("WARN"),
            Grade::Fail => self.bad("FAIL"),
        }
    }
}

/// A table in kvprobe's one style: rules above, below and under the header
/// only, none between rows; never wrapped.
pub fn table() -> comfy_table::Table {
    use comfy_table::{ContentArrangement, TableComponent, presets::UTF8_HORIZONTAL_ONLY};
    let mut t = comfy_table::Table::new();
    t.load_preset(UTF8_HORIZONTAL_ONLY).set_content_arrangement(ContentArrangement::Disabled);
    for c in [
        TableComponent::HorizontalLines,
        TableComponent::MiddleIntersections,
        TableComponent::LeftBorderIntersections,
        TableComponent::RightBorderIntersections,
    ] {
        t.remove_style(c);
    }
    t
}

/// Right-aligns every column except those named in `left` (numbers right,
/// words left).
pub fn align_numbers<S: AsRef<str>>(t: &mut comfy_table::Table, header: &[S], left: &[&str]) {
    for (i, name) in header.iter().enumerate() {
        if !left.contains(&name.as_ref()) {
            if let Some(c) = t.column_mut(i) {
                c.set_cell_alignment(comfy_table::CellAlignment::Right);
            }
        }
    }
}

/// The mark for a passed check.
pub const PASS: &str = "ok";
/// The mark for a failed check.
pub const FAIL: &str = "FAIL";
