"""Benchmarks of the engine against the paper's way of doing the same work.

Run one with ``python -m benchmarks NAME`` (``all`` runs every one, each in its own process).
Each prints a table and, as its last line, one JSON object of named figures; ``--record``
stores the result in ``benchmarks/results/NAME.json`` and regenerates ``docs/benchmarks.md``
from those files, so every figure in the document comes from a run.
"""
