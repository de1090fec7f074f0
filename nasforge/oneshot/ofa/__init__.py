"""Once-for-All: an elastic supernet over the ``mobile`` space, progressive shrinking with
in-place distillation, subnet extraction and latency-targeted specialisation.

Modules: :mod:`~nasforge.oneshot.ofa.elastic` (the elastic supernet and extraction),
:mod:`~nasforge.oneshot.ofa.train` (the progressive-shrinking trainer and its config),
:mod:`~nasforge.oneshot.ofa.specialize` (accuracy predictor + latency table + search).
"""
