"""Solvers for the optimisation problems of the theory.

- :func:`softmax_code` — maximise the minimal one-vs-rest distance of K unit vectors
  (a Softmax Code), certified; :func:`certify_code` certifies a given code.
- :func:`tammes` — maximise the minimal pairwise distance of K unit vectors in R^d.
- :func:`train_ufm` — the unconstrained feature model (Eq. 2) trained with the fused
  losses; :func:`hardmax_problem` — Eq. 5 solved through the Softmax Code.
- :func:`assign_classes` — optimal matching of classes to code vectors (Hungarian).
"""
from .tammes import TammesResult, tammes
from .assign import AssignmentResult, assign_classes

__all__ = ["tammes", "TammesResult", "assign_classes", "AssignmentResult"]
from .softmax_code import SoftmaxCodeResult, certify_code, softmax_code
from .ufm import HardMaxResult, UFMResult, hardmax_problem, train_ufm

__all__ += ["softmax_code", "SoftmaxCodeResult", "certify_code", "train_ufm", "UFMResult", "hardmax_problem",
            "HardMaxResult"]
