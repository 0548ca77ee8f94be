//! builder-sandbox (placeholder, being built).
