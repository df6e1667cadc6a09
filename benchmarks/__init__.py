"""deswm's benchmark harness: ``python -m benchmarks`` (see docs/performance.md).

Modules:

* :mod:`benchmarks.dataset`: the seeded data set (files on disk and the source table),
  cached under a work directory;
* :mod:`benchmarks.probes`: what is measured inside a child process (time inside SQL
  statements, peak RSS, PostgreSQL WAL);
* :mod:`benchmarks.scenarios`: deswm's cycle and the baselines, each run in a fresh
  child process (``python -m benchmarks.child``);
* :mod:`benchmarks.report`: the figures P1 to P8, their targets and the printed table;
* :mod:`benchmarks.cli`: the command line that runs everything and writes the JSON.

``python -m benchmarks.packer_memory`` is a separate command: the peak RSS of one bucket.
"""
