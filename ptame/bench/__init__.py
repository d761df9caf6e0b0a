"""The benchmarks, each ``python -m ptame.bench.NAME``; ``python -m ptame.bench`` runs ``overhead``.

- ``overhead``: the cost of explaining the top-1 class with P-TAME, as a ratio to a forward pass;
- ``baselines``: streamed Score-CAM against pytorch-grad-cam's, and the cost of every method;
- ``app``: start-up and request times of the demo app, offline;
- ``gpu``: the GPU figures in one run (training throughput, P-TAME's overhead, Score-CAM, the
  evaluation of the shapes demo); ``--device cpu --quick`` checks it on a CPU.

``timing`` holds their shared wall-time measurement. The training benchmark is ``python -m train bench``.
"""
