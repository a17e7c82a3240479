"""Helpers every layer may use (files, progress bars, precision, hardware, distributed runs, metrics, options declared and checked); imports nothing else of dabnet."""
