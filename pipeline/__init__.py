"""shardmix: data-mixture ablations approximated by merging shard models (Na et al., 2024)."""

import os as _os

# OpenMP threads that spin while waiting make torch several times slower whenever another process
# shares the cores (measured here: 2.6 s vs 0.85 s per training step). Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
