"""Where documents and feedback persist: one :class:`~service.storage.base.Storage` per mode.

The mode is chosen once, at start, by :func:`service.storage.factory.open_storage` from the settings
and the model's bundle; nothing else asks which mode it is.

================ ========================================== ===========================================
mode             documents                                   feedback, durability
================ ========================================== ===========================================
local            FAISS in process (``embedded.py``)          SQLite in ``--data_dir``: documents, vectors,
                                                             lexical index, feedback (``journal.py`` over
                                                             :mod:`service.store`)
in memory        FAISS in process (``embedded.py``)          in memory: lost on restart (no ``--data_dir``)
index bundle     FAISS read from a published bundle,         SQLite in ``--data_dir`` if given, else memory
                 read-only (``bundle.py``)
Milvus           Milvus, shared by every replica             the Milvus feedback collection
                 (``milvus.py``, ``--index milvus``)
================ ========================================== ===========================================
"""
