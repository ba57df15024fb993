"""Geometry of class weights: one-vs-rest distances (Def. 2.1) with certificates,
optimal features (Thm 3.5), rattlers (Def. 3.4) and one-vs-one distances (Eq. 11)."""
from .one_vs_one import OneVsOneResult, one_vs_one_distance
from .one_vs_rest import OneVsRestResult, one_vs_rest_distance

__all__ = ["OneVsRestResult", "OneVsOneResult", "one_vs_rest_distance", "one_vs_one_distance"]
