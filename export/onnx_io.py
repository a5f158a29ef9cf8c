"""Save ONNX graphs, moving the weights of models over the 2 GB protobuf limit (bge-m3 fp32) to one
external ``<file>.data`` next to the graph.

Example::

    >>> import onnx, tempfile
    >>> from pathlib import Path
    >>> from onnx import helper, TensorProto
    >>> graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    >>> save_onnx(helper.make_model(graph), Path(tempfile.mkdtemp()) / "m.onnx")
    ['m.onnx']
"""

from __future__ import annotations

from pathlib import Path

import onnx

EXTERNAL_DATA_BYTES = 2**31 - 2**26  # the protobuf limit, less room for the graph itself


def save_onnx(proto: onnx.ModelProto, path: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> list[str]:
    """Save ``proto``; weights go to one ``<name>.data`` file when they exceed ``external_data_bytes``.
    Returns the file names written."""
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights <= external_data_bytes:
        onnx.save_model(proto, str(path))
        return [path.name]
    onnx.save_model(
        proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
    )
    return [path.name, path.name + ".data"]
