"""kooplearn_prune: Koopman-operator pruning of neural networks, NumPy-first and built to be read.

Data path: ``data`` → ``training.Trainer`` → ``trajectory.TrajectoryRecorder`` → ``Trajectory``
→ ``koopman.KMD`` → scores (``koopman.kmp_scores``, ``koopman.kgp_scores``, ``pruning``
baselines) → masks (``pruning.global_mask``) → ``pruning.apply_masks``. The mathematics is in
``docs/theory.md``; the tutorials are in ``tutorials/``.
"""

from .backend import get_backend, set_backend, use_backend

__version__ = "0.1.0"

__all__ = ["__version__", "set_backend", "get_backend", "use_backend"]
