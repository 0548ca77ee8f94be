//! builder-store (placeholder, being built).
