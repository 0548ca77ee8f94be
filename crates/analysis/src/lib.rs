//! builder-analysis (placeholder, being built).
