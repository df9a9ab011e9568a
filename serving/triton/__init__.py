"""The Triton runtime.

The model repository and its configs, artifact checks, the embedded server and its environment,
process helpers, model control and hot add; ``backend/`` is the python backend's ``model.py``,
copied into the repository. May import ``shared`` and ``heads`` only.
"""
