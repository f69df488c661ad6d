"""Standalone Beam jobs of the pipeline, one module per stage: `python -m beam_jobs.<job>`."""

import os
import warnings

# TFT's transform layer and TFMA need Keras 2; TensorFlow 2.16 picks Keras 3 unless this is set
# before its first import, so the package sets it for every job and every user of the package.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# google-api-core warns about Python 3.11 support on every import; nothing a job's user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module="google")
