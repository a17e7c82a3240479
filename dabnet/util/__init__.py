"""Helpers every layer may use (files, progress bars, precision, hardware, distributed runs, metrics); imports nothing else of dabnet."""
