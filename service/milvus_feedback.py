"""Feedback records with ``--index milvus``: the ``P_N_feedback`` collection every replica writes and the
retraining Job reads (``python -m service export-feedback``).

A record is stored as compressed JSON, base64, in parts ``<time>-<uuid>-<part>`` below Milvus's VARCHAR limit
(ids sort in time order); :meth:`MilvusFeedback.read_feedback` joins the parts back, oldest first. Mixed into
:class:`service.milvus.MilvusStore`, whose connection (``client``, ``call``, ``_scan``, ``_appears``) it uses.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Mapping

from .errors import IndexUnavailable

_CHUNK = 60_000  # feedback records are stored compressed, in parts below the VARCHAR limit


class MilvusFeedback:
    """The feedback half of :class:`service.milvus.MilvusStore`."""

    def _feedback_collection(self) -> str:
        if not self.call(self.client.has_collection, self.feedback_name):
            pm = self._pymilvus
            schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", pm.DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("data", pm.DataType.VARCHAR, max_length=_CHUNK)
            schema.add_field("vector", pm.DataType.FLOAT_VECTOR, dim=2)  # Milvus requires one; unused
            index = self.client.prepare_index_params()
            index.add_index("vector", index_type="FLAT", metric_type="L2")
            try:
                self.call(self.client.create_collection, self.feedback_name, schema=schema, index_params=index,
                          consistency_level="Strong")
            except IndexUnavailable:
                if not self._appears(self.feedback_name):
                    raise
        self.call(self.client.load_collection, self.feedback_name)
        return self.feedback_name

    def add_feedback(self, record: Mapping) -> None:
        """Store one record durably: compressed JSON in parts ``<time>-<uuid>-<part>`` (time-ordered)."""
        data = base64.b64encode(zlib.compress(json.dumps(record, ensure_ascii=False).encode())).decode()
        key = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        parts = [data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [""]
        rows = [{"id": f"{key}-{n:04d}", "data": part, "vector": [0.0, 0.0]} for n, part in enumerate(parts)]
        self.call(self.client.insert, self._feedback_collection(), rows)

    def read_feedback(self) -> list[dict]:
        """Every feedback record, oldest first."""
        name = self._feedback_collection()
        rows = sorted(r for batch in self._scan(name, ["id", "data"], "") for r in
                      ((row["id"], row["data"]) for row in batch))
        records, parts, key = [], [], None
        for row_id, data in rows + [("", "")]:
            if row_id.rsplit("-", 1)[0] != key and parts:
                records.append(json.loads(zlib.decompress(base64.b64decode("".join(parts)))))
                parts = []
            key = row_id.rsplit("-", 1)[0]
            parts.append(data)
        return records
