"""The output contract of an exported head (no torch: the client and Triton configs read it).

Every exported head ends in final detections of fixed size K (``max_dets``):
``num_dets`` int32 [1], ``boxes`` float32 [K, 4] (x1, y1, x2, y2 in input pixels), ``scores``
float32 [K], ``classes`` int32 [K]; rows past ``num_dets`` are padding.
"""

#: Output names of one head, in the ONNX graph's order.
OUTPUT_NAMES = ("num_dets", "boxes", "scores", "classes")
