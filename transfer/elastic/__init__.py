"""The elastic trunk: one weight-sharing supernet, its sub-networks searched per device, published as variants.

* :mod:`~transfer.elastic.space`: the choices (per-block widths, per-stage depths) as data;
* :mod:`~transfer.elastic.supernet`: the weight-sharing forward, channel sorting, sub-network extraction;
* :mod:`~transfer.elastic.sandwich`: sandwich training with in-place distillation;
* :mod:`~transfer.elastic.recalibrate`: BatchNorm statistics per sub-network;
* :mod:`~transfer.elastic.latency_model`: measured latency table and predictor per device;
* :mod:`~transfer.elastic.subnet_eval`: every head's mAP on a sub-network;
* :mod:`~transfer.elastic.search`: evolutionary / exhaustive Pareto search with a resumable state;
* :mod:`~transfer.elastic.catalogue_variants`: chosen sub-networks as catalogue variants;
* :mod:`~transfer.elastic.elastic_search`: `polyhead search`; :mod:`~transfer.elastic.search_bench`: its benchmark.

Imports ``shared``, ``heads`` and the rest of ``transfer`` only.
"""
