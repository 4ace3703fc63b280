"""Results on disk: atomic writes and the versioned schema of studies and runs."""
