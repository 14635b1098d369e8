"""k3eval: evaluation and benchmarking suite for text-to-image models (Kandinsky 3.0 / 3.1 and baselines)."""

import os as _os

# OpenMP threads that spin while waiting starve each other when anything else uses the CPU (a second rank, the
# Streamlit server, a test runner): a tiny U-Net pass measured 0.5 s with passive waiting and 35 s with the default
# on a 2-core machine with one other busy process. It must be set before torch loads its OpenMP runtime, and an
# explicit setting by the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
