"""The durable buffer: SQLite schema and migrations (``schema``, ``db``), the chunk/block codec (``codec``),
the single writer thread with retention, quota and compaction (``writer``), read-only queries (``queries``)
and the scorer's persisted state (``scorer_state``)."""
