"""Test-wide settings: nothing is downloaded and nothing is written outside temp folders.

TemplateFlow reads ``TEMPLATEFLOW_HOME`` when it is first imported, so the environment is
set here, before any test module imports bidsharmony or templateflow.
"""

import os
import tempfile
from pathlib import Path

_SCRATCH = Path(tempfile.mkdtemp(prefix="bidsharmony-tests-"))
os.environ["TEMPLATEFLOW_HOME"] = str(_SCRATCH / "templateflow")
os.environ["MPLCONFIGDIR"] = str(_SCRATCH / "matplotlib")
os.environ["NIPYPE_NO_ET"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
