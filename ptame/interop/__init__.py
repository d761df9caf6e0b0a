"""Interoperability with the explainability ecosystem: Quantus, captum, and anyone's own maps.

- ``ptame.interop.maps``: ``as_maps`` turns any attribution (captum's, a user's (B, H, W) maps,
  numpy or torch) into ptame's (B, H, W) maps in [0, 1]; ``score_maps`` scores them with ptame's
  metrics.
- ``ptame.interop.quantus``: ``PixelClassifier``, a plain ``nn.Module`` that takes pixels in
  [0, 1] and normalises inside (what Quantus calls), and ``explain_func`` for any registered
  method, P-TAME included. Needs no Quantus to import; ``pip install ptame-xai[quantus]`` to use
  Quantus with it.
- ``ptame.interop.captum``: captum's ``LayerGradCam`` and ``Occlusion`` as ptame methods,
  registered through ``ptame.methods.register_method`` by ``register()`` (needs captum:
  ``pip install ptame-xai[captum]``); the app and the command line offer them whenever captum is
  installed.
- ``ptame.interop.plugins``: registers those optional methods, and a user's own method modules
  named in ``$PTAME_METHOD_MODULES``, when the app or the command line starts.

Nothing here is imported by the rest of ptame: the optional packages stay optional.
"""
