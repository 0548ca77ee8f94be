//! builder-testkit (placeholder, being built).
