"""Reproducing, evaluating and publishing P-TAME explainers: ``python -m train COMMAND``."""

import os

# OpenMP threads that wait for work spin on their core by default. On a CPU that other work
# shares, torch's threads then wait for each other's busy cores: EfficientNet-Lite0 features
# took 0.47-1.07 s per batch with 2 threads on 2 busy cores, 0.15-0.18 s with passive waiting
# (docs/own-classifier.md). Set here, before torch is imported; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
