"""Data: validated COCO reading, torch datasets, augmentation, synthetic multi-task scenes. Imports ``shared``."""
