//! The agent's own metrics (`gopher_*`).
