"""Checks for the exercises of the tutorials, one module per notebook.

In a notebook: ``from kooplearn_prune.course import lesson01 as check`` and then, after
answering, ``check.softplus_op(softplus)``. Every check returns a ``Verdict`` (right, wrong with
a hint, or not attempted yet) and raises nothing unless ``strict=True``. Worked solutions live in
``tutorials/solutions/``, away from the lessons.
"""

from .verdict import STRICT_ENV, ExerciseError, Verdict

__all__ = ["Verdict", "ExerciseError", "STRICT_ENV"]
