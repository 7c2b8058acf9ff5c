"""New attachments: files staged in a spool folder and uploaded in the background.

`UploadManager` stages, uploads and retries, `MtimeStore` keeps the mtimes
users set before an upload, and `StagedFile` is the snapshot other layers see.
"""

from rayfs.uploads.manager import UploadManager
from rayfs.uploads.mtimes import MtimeStore
from rayfs.uploads.staged import StagedFile

__all__ = ["MtimeStore", "StagedFile", "UploadManager"]
