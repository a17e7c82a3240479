"""Helpers every layer may use (files, progress bars, precision, hardware, distributed runs, metrics, options declared and checked, registries); imports nothing else of dabnet."""
