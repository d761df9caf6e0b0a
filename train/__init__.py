"""Reproducing, evaluating and publishing P-TAME explainers: ``python -m train COMMAND``."""
