"""Triton python-backend model shipped into every leaf version directory (see model.py)."""
