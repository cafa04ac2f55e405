//! The one place that reads the wall clock. Everything else takes `now` as a parameter (clippy.toml forbids
//! `Utc::now` elsewhere), so schedule maths are pure and testable.

use chrono::{DateTime, Utc};

#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
