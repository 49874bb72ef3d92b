"""Torch-side code (the ``train`` extra): the CMR-CLIP-compatible model, ONNX export, checkpoint import.

Nothing outside this package imports torch.
"""
