"""The one inference runtime, torch-free: text → token ids → ONNX Runtime → pooled, unit-length vectors.

Used alike by the export gates, retrain, the benchmarks and the service, so a gate certifies exactly
what ``/embed`` returns. Three steps, one module each:

* :mod:`.tokenizer` (pre): :class:`TextTokenizer` (query prompt, right/left truncation, :class:`InputTooLong`),
  :class:`Encoded`, :func:`pad_batch`.
* :mod:`.session` (core): :class:`OnnxSession`, the only place that sets session options and picks the
  device (:func:`uses_cuda`), batch-invariant (dynamic int8 runs one sequence per pass:
  :func:`runs_per_sequence`, from the manifest's :func:`quantization_mode`); :class:`SessionError`.
* :mod:`.encoder` (post, and the three together): :func:`normalize`, :class:`OnnxEncoder`.

The service batches requests itself (``service.batching``) but runs the same three steps; it imports
these names, never ``onnxruntime`` or ``tokenizers`` directly.
"""

from .encoder import OnnxEncoder, normalize
from .session import (
    OnnxSession,
    SessionError,
    quantization_mode,
    runs_per_sequence,
    session_options,
    uses_cuda,
)
from .tokenizer import TRUNCATION_DIRECTIONS, Encoded, InputTooLong, TextTokenizer, pad_batch

__all__ = ["TRUNCATION_DIRECTIONS", "Encoded", "InputTooLong", "OnnxEncoder", "OnnxSession", "SessionError",
           "TextTokenizer", "normalize", "pad_batch", "quantization_mode", "runs_per_sequence", "session_options",
           "uses_cuda"]
