"""TensorFlow imported with its start-up noise kept out of the gateway's log, for the embedded backend and the tools.

TensorFlow's C++ runtime writes to the process's stderr as it loads, before any
logging setting can reach it (absl logs "before InitializeLog" go straight to file
descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says): oneDNN notices, CPU-feature
advice, and on a machine without a GPU an error-level "failed call to cuInit"
that only means "no GPU here". :func:`import_tensorflow` imports TensorFlow and
lets it find its devices with that descriptor pointed at a temporary file, then
passes on what matters at the chosen level and drops the rest. The thin gateway
never imports this module.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from types import ModuleType

# Lines TensorFlow prints at every start that say nothing a user can act on.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|"
    r"This TensorFlow binary is optimized|To enable the following instructions|rebuild TensorFlow with|"
    r"Could not find cuda drivers|failed call to cuInit|cuda_platform|cuda_diagnostics|cuda_executor|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"TF-TRT Warning|mlir_graph_optimization_pass"
)
# absl's prefix: severity letter, date, time, thread, file:line.
_SEVERITY = re.compile(r"^([IWEF])\d{4} ")
_lock = threading.Lock()


def import_tensorflow(level: str = "INFO") -> ModuleType:
    """Import TensorFlow with its start-up noise filtered; below INFO (DEBUG) everything is passed on."""
    with _lock:
        if "tensorflow" in sys.modules:
            return sys.modules["tensorflow"]
        verbose = logging.getLevelName(level) <= logging.DEBUG
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "1")
        captured = _with_stderr_captured(_load_tensorflow)
        log = logging.getLogger("app.tensorflow")
        for line in captured.splitlines():
            severity = _SEVERITY.match(line)
            if verbose:
                log.debug("%s", line)
            elif line.strip() and not _NOISE.search(line) and (severity is None or severity.group(1) != "I"):
                log.warning("%s", line)
        import tensorflow as tf

        # TensorFlow's Python logger: deprecation notices of the TF1 loader the runtime uses on purpose.
        tf.get_logger().setLevel(logging.DEBUG if verbose else logging.ERROR)
        return tf


def _load_tensorflow() -> None:
    import tensorflow as tf

    tf.config.list_physical_devices()  # CUDA's probe, and its complaint on a CPU machine, happen here


def _with_stderr_captured(work) -> str:
    """Run ``work()`` with file descriptor 2 pointed at a temporary file; return what was written there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            work()
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))  # the reason may be in there
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return capture.read().decode("utf-8", "replace")
