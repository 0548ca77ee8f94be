//! builder-git (placeholder, being built).
