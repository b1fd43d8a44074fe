"""The answer cache: request keys (:mod:`.keys`), the near-miss guard (:mod:`.guard`) and the
cache itself over the vector index and the store (:mod:`.semantic`)."""
