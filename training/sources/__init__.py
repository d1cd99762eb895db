"""One small module per document source; each gives ``documents(cfg, cache_dir)`` (raw ``bytes`` in
a fixed order), ``cache_parts(cfg)`` (for the cache key) and ``description(cfg)``."""
