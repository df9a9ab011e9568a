"""Training.

The joint trunk + heads loop, the multi-task model and its checkpoint, distillation, and head-only
training on a frozen trunk's cached features. Imports ``transfer.data``, ``heads`` and ``shared``.
"""
