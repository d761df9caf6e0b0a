"""How a network gets in: every module that finds, checks, budgets and builds a classifier or an
explainer's networks, in one folder (as timm keeps its loaders together).

- ``backbones``: the classifiers that can be explained (``create_backbone``, ``Backbone``,
  ``Preprocessing``): a name becomes a model, its preprocessing, its CAM target layer and labels.
- ``network_names``: the one rule for where a network's name may lead (a timm registry name,
  "hf-hub:ORG/NAME", "local-dir:PATH"; a Hub explainer's names stay in its repo or on the Hub).
- ``timm_sources``: timm networks named by a config: checked, then built within a budget.
- ``hf_transformers``: Hugging Face transformers image classifiers from a folder or a Hub repo
  (never code from their files).
- ``target_layers``: the layer Grad-CAM-style methods read, and how its output becomes a map.
- ``budget``: building a network that an untrusted config describes, within a budget of bytes.
- ``untrusted``: reading files that may come from anyone (JSON, safetensors headers) within bounds.
- ``checkpoint``: an explainer checkpoint's config.json and head weights, read and checked.
- ``hub``: finding files in a local folder or a Hugging Face Hub repo (cached, offline-aware).
- ``files``: writing files and folders so that a crash never leaves one half-written.

These modules share the bottom layer with the method's core (``ptame.perturb``'s normalisation,
``ptame.head``'s shapes, ``ptame.errors``) and import nothing above it: not ``ptame.explainer``,
``ptame.methods``, ``ptame.serving``.
"""
