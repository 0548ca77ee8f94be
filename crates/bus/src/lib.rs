//! builder-bus (placeholder, being built).
