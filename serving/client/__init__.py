"""The client SDK: ``Detector`` (sync) and ``AsyncDetector`` (asyncio) over Triton gRPC, and their result types.

``protocol`` holds the transport-free parts (image checks, request planning, decoding) and
``detector`` the gRPC clients; import from here, not from those modules. Imports ``shared``,
``serving.triton.model_names`` (the model and tensor names) and ``serving.triton.model_control`` only.
``predict`` (many files, concurrently; behind ``polyhead predict``) with ``image_sources``, ``drawing``
and ``coco_results`` also reads files with ``transfer.data.images`` (Pillow, no torch); import them directly.
"""

from serving.client.detector import AsyncDetector, Detector
from serving.client.protocol import Detection, ImageResult, UnknownTaskError, UnknownVariantError

__all__ = ["AsyncDetector", "Detection", "Detector", "ImageResult", "UnknownTaskError", "UnknownVariantError"]
