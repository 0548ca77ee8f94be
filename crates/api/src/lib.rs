//! builder-api (placeholder, being built).
