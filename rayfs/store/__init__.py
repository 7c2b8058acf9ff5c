"""The mount's view of the account: TTL-cached records, download links and an on-disk byte cache."""

from rayfs.store.store import DEFAULT_METADATA_TTL, AttachmentReader, Store

__all__ = ["DEFAULT_METADATA_TTL", "AttachmentReader", "Store"]
