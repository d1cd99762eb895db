"""Where documents come from: one small module per source, each giving raw ``bytes``.

Every source module has the same three functions, which :mod:`training.corpus` calls:
``documents(cfg, cache_dir)`` (the documents in a fixed order), ``cache_parts(cfg)`` (a
readable prefix and what the documents depend on, for the cache key) and ``description(cfg)``.
"""
