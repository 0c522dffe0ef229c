//! Sinks: each reads imdb snapshots and knows nothing of probes.
