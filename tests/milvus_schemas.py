"""Collections as earlier releases wrote them, for the tests that serve or refill them (Milvus Lite)."""

from __future__ import annotations


def release_one_schema(client, dim: int):
    """The first Milvus release's document collection: id, text, metadata, updated_at and a FLAT vector field
    (no BM25, no windows). Returns ``(schema, index_params)`` for ``client.create_collection``."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
    schema.add_field("text", DataType.VARCHAR, max_length=65535)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("updated_at", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    return schema, index
