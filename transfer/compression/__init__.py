"""Compression of the trunk.

Structured pruning with distillation fine-tuning, INT8/FP16 quantization, and the variant
catalogue's admission and Pareto rules. Imports ``transfer.export``, ``transfer.data`` and below.
"""
