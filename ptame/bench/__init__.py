"""The benchmarks, each ``python -m ptame.bench.NAME``; ``python -m ptame.bench`` runs ``overhead``.

- ``overhead``: the cost of explaining the top-1 class with P-TAME, as a ratio to a forward pass;
- ``baselines``: streamed Score-CAM against pytorch-grad-cam's, and the cost of every method;
- ``app``: start-up and request times of the demo app, offline.

``timing`` holds their shared wall-time measurement. The training benchmark is ``python -m train.bench``.
"""
