//! builder-worker (placeholder, being built).
