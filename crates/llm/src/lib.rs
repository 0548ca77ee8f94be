//! builder-llm (placeholder, being built).
