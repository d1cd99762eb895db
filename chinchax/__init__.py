"""chinchax: a compute budget in, a trained language model and a better scaling law out.

The code lives in four packages that depend downwards only: ``launch`` (command line, config,
processes) → ``training`` (loop, data, checkpoints) → ``scaling`` (FLOPs, laws, allocator,
ladders) → ``models`` (the transformer and its sharding).  This package holds only what every
layer shares: the error family.
"""
