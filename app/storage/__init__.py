"""The storage initializer: a model tree pulled from a URI (s3://, gs://, http(s)://, file://, a path) into a folder.

KServe and Seldon run such a step in an init container before TF Serving starts; ``flask --app app pull-models
SRC DEST`` is this project's, and it runs from the thin gateway image (no TensorFlow). The pieces:

    sources.py   one class per scheme: list the files under the URI, fetch one; foreign errors become PullError
    archives.py  .tar.gz / .tgz / .zip unpacked, refusing any member that would land outside the folder
    pull.py      retries with backoff, the staging folder, landing it whole, the report
    cli.py       the click command
"""

from app.storage.errors import PullError
from app.storage.pull import PullReport, Retry, pull

__all__ = ["PullError", "PullReport", "Retry", "pull"]
