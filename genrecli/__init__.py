"""genre: multi-modal music genre classification (DM2KMN and peer systems)."""

import os as _os

__version__ = "0.1.0"

# OpenBLAS's idle threads busy-wait 2**28 cycles (about 0.1 s) after every threaded call before they sleep.
# NumPy's and SciPy's wheels each bundle an OpenBLAS, so on a few cores the spinning threads of one library take
# cores from the other's next call: on 2 cores, the rbf map's 5000 x 1000 fit_transform took 0.21 s instead of
# 0.18 s (bench/bench_kernels.py; BENCHMARKS.md, issue 14's sixth pass). 2**20 cycles (about 0.4 ms) keeps
# back-to-back calls on warm threads. It is read once, when a library loads, so it holds where genrecli is
# imported before NumPy (the `genre` command always); a value the user set is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
