"""Solvers for the optimisation problems of the theory: the Tammes problem and the
class-to-code assignment (issue 6). The Softmax Code solver, UFM training and the
HardMax problem build on the one-vs-rest distance and the fused losses and are added
with them.

- :func:`tammes` — maximise the minimal pairwise distance of K unit vectors in R^d.
- :func:`assign_classes` — optimal matching of classes to code vectors (Hungarian).
"""
from .tammes import TammesResult, tammes
from .assign import AssignmentResult, assign_classes

__all__ = ["tammes", "TammesResult", "assign_classes", "AssignmentResult"]
# [solvers2] softmax codes, UFM, HardMax
from .softmax_code import SoftmaxCodeResult, certify_code, softmax_code
from .ufm import HardMaxResult, UFMResult, hardmax_problem, train_ufm

__all__ += ["softmax_code", "SoftmaxCodeResult", "certify_code", "train_ufm", "UFMResult", "hardmax_problem",
            "HardMaxResult"]
# end [solvers2]
