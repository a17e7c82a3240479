"""One module per CLI command: each turns its config dataclass into work; may import every layer below, never cli."""
