"""Transfer learning: the commands ``train``, ``compress``, ``add_task``, ``evaluate`` and their ``config``.

Their parts live in ``data/`` (COCO, datasets, augmentation, synthetic scenes), ``training/`` (the
loop, the multi-task model, distillation, head-only training on cached features),
``compression/`` (pruning, quantization, the variant catalogue), ``export/`` (ONNX graphs,
publishing to the workspace) and ``evaluation/`` (prediction over a split, COCO mAP).
May import ``heads`` and ``shared``; never ``serving`` (a served detector is passed in).
"""
