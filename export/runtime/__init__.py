"""The one inference runtime, torch-free: text → token ids → ONNX Runtime → pooled, unit-length vectors.

Used alike by the export gates, retrain, the benchmarks and the service, so a gate certifies exactly
what ``/embed`` returns. Three steps, one module each:

* :mod:`.tokenizer` (pre): :class:`TextTokenizer` (query prompt, right/left truncation, :class:`InputTooLong`),
  :class:`Encoded`, :func:`pad_batch`.
* :mod:`.session` (core): :class:`OnnxSession`, the only place that sets session options and picks the
  device (:func:`uses_cuda`); :class:`SessionError`.
* :mod:`.encoder` (post, and the three together): :func:`normalize`, :class:`OnnxEncoder`.

The service batches requests itself (``service.batching``) but runs the same three steps; it imports
these names, never ``onnxruntime`` or ``tokenizers`` directly.
"""

from .encoder import OnnxEncoder, normalize
from .session import OnnxSession, SessionError, session_options, uses_cuda
from .tokenizer import TRUNCATION_DIRECTIONS, Encoded, InputTooLong, TextTokenizer, pad_batch

__all__ = ["TRUNCATION_DIRECTIONS", "Encoded", "InputTooLong", "OnnxEncoder", "OnnxSession", "SessionError",
           "TextTokenizer", "normalize", "pad_batch", "session_options", "uses_cuda"]
