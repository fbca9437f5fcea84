//! Settings read from text and the problems found in them, each naming its field: shared by the
//! configuration file, the admin API's entries and the helper's settings, so every surface reports
//! the same way.

use std::time::Duration;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where: `trust_domain`, `entry[2].spiffe_id`, `--socket`.
    pub field: String,
    /// What is wrong and what to do, naming the value.
    pub message: String,
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct Errors(pub Vec<FieldError>);

fn render(errors: &[FieldError]) -> String {
    let mut out = format!(
        "invalid configuration ({} problem{}):",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str(&format!("\n  {}: {}", e.field, e.message));
    }
    out
}

/// Problems collected while reading settings, so all are reported at once.
#[derive(Debug, Default)]
pub struct Collector(pub Vec<FieldError>);

impl Collector {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// `Ok(value)` when nothing was pushed, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The longest duration any setting may have (100 years of 365 days): every time computed from a
/// setting stays far inside what certificates, SQLite and the clock can represent.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The largest count a limit may have (streams, cache entries): far beyond what a node serves, and
/// far below what would overflow a semaphore or an allocation.
pub(crate) const MAX_COUNT: usize = 1_000_000;

/// Checks a count limit: positive and at most [`MAX_COUNT`].
pub(crate) fn count(errs: &mut Collector, field: &str, value: usize, zero_means: &str) {
    if value == 0 {
        errs.push(
            field,
            format!("0 would {zero_means}; use a positive number"),
        );
    } else if value > MAX_COUNT {
        errs.push(
            field,
            format!("{value} is more than the largest allowed, {MAX_COUNT}; use a smaller number"),
        );
    }
}

pub(crate) fn duration(
    errs: &mut Collector,
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Duration {
    match text {
        None => default,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) if d > MAX_DURATION => {
                errs.push(
                    field,
                    format!(
                        "{t:?} is longer than {}, the most any lanyard duration may be; use a shorter one",
                        humantime::format_duration(MAX_DURATION)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                errs.push(
                    field,
                    format!("invalid duration {t:?}: {e}; write it like \"90s\", \"10m\", \"1h\" or \"30d\""),
                );
                default
            }
        },
    }
}
