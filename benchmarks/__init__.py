"""Benchmark harness for streamconv (issue 4): real-shaped synthetic checkpoints, cold-cache runs
of streamconv, of transformers 4.47.1's convert script and of a cp+fsync floor, with wall time,
peak RSS of the process tree, RSS over time and I/O bytes. Entry point: `bash benchmarks/run.sh`
(see benchmarks/README.md). No file here is named test_*.py: pytest never collects it.
"""
