"""Export: ONNX graphs and publishing them.

ONNX graphs of the trunk and heads (with torch parity checks), and publishing them into the
workspace with their metadata (``variant.json``, ``head.json``). Imports ``transfer.evaluation``.
"""
