"""gunicorn settings for tests/system/test_thin_gateway.py: the project's gunicorn.conf.py, plus a server hook by which
each worker writes down, after every request it served, which interpreter it runs and every module it has imported.

The hook is gunicorn's ``post_request``: it runs in the worker, outside the app, so the app needs no endpoint
or setting for it. Files go to the folder named by $PORTRAIT_TEST_IMPORT_PROBE, one per worker.
"""

import json
import os
import sys
import threading
from pathlib import Path

_PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
exec(compile(_PROJECT_CONFIG.read_text(encoding="utf-8"), str(_PROJECT_CONFIG), "exec"))  # its settings and hooks
_project_post_request = globals().get("post_request")


def post_request(worker, req, environ, resp):
    if _project_post_request is not None:
        _project_post_request(worker, req, environ, resp)
    report = Path(os.environ["PORTRAIT_TEST_IMPORT_PROBE"]) / f"worker-{os.getpid()}.json"
    partial = report.with_name(f"{report.name}.{threading.get_ident()}.partial")  # threads of one worker may race
    partial.write_text(json.dumps({"prefix": sys.prefix, "modules": sorted(sys.modules)}), encoding="utf-8")
    partial.replace(report)
