"""Retraining stage: feedback + data → candidate model → export → promotion gate → ``LATEST``.

It sits above export (training → export → retrain): it trains with :mod:`training` (its defaults come from
:mod:`training.config`), publishes with :mod:`export.pipeline` and moves ``LATEST`` with :mod:`export.registry`.
It never imports the service: feedback comes as files or over HTTP. Run ``python -m retrain --help``
(``python -m export retrain`` is the same command).
"""
