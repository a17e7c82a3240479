"""One module per CLI command: each turns its config dataclass into work; may import config, training, inference,
runtimes, data, io, models and util (never cli)."""
