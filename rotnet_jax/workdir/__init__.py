"""A run's folder: paths local or remote (``filesystem``), the files a run
writes (``run_files``), the lock that keeps one run per workdir (``lock``)
and the Orbax checkpoints (``checkpoint``)."""
