"""One adapter layer between deswm and object storage (local, S3, memory, any fsspec).

``base`` holds the :class:`ObjectStore` protocol and :class:`ObjectInfo`; ``local``,
``s3``, ``memory`` and ``fsspec`` the implementations; ``errors`` the one map from storage
failures to what they mean; ``registry`` which implementation serves a URL.
"""

from deswm._objectstore.base import ErrorScope, ObjectInfo, ObjectStore, PublishBatch, WriteFn
from deswm._objectstore.registry import UPLOAD_BLOCK_SIZE, filesystem, open_store, register

__all__ = [
    "UPLOAD_BLOCK_SIZE",
    "ErrorScope",
    "ObjectInfo",
    "ObjectStore",
    "PublishBatch",
    "WriteFn",
    "filesystem",
    "open_store",
    "register",
]
