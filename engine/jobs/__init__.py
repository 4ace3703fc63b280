"""Jobs: the persistent job store, the background worker and its executors (local or Dask)."""
