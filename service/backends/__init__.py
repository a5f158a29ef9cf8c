"""Inference backends behind one small interface.

* :mod:`.base`: the interface (:class:`~.base.Backend`, :class:`~.base.BackendError`, :class:`~.base.ModelSpec`).
* :mod:`.factory`: :func:`~.factory.load_backend`, which picks one by name.
* :mod:`.onnx` (default; CPU int8 or fp32, CUDA when present): an adapter over the runtime's
  ``export.runtime.OnnxSession``, never needs torch.
* :mod:`.torch`: imported lazily, only when selected, so the CPU image can ship without torch.
"""
