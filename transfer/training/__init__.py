"""Training.

The joint trunk + heads loop, the multi-task model and its checkpoint, distillation, and head-only
training on a frozen trunk's cached features, and the learning-rate schedule they (and pruning's
fine-tune) share. Imports ``transfer.data``, ``heads`` and ``shared``.
"""
