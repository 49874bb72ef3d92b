"""Models: manifest and registry (light), and the Encoder (``cmrdx.model.encoder``, the one onnxruntime user).

Import ``cmrdx.model.encoder`` explicitly where embeddings are needed; this package does not, so that
``cmrdx models list`` and friends never load onnxruntime.
"""
