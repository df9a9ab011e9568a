"""Evaluation: run a detector over a COCO split (torch or onnxruntime) and score it with COCO mAP."""
