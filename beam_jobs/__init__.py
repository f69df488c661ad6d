"""Standalone Beam jobs of the pipeline, one module per stage: `python -m beam_jobs.<job>`.

Two floors: the jobs (`beam_jobs/<job>.py`, each thin) stand on one shared layer, `beam_jobs.lib`
(sources, splits, records, shards, the artifact layout, manifests, the run skeleton, CLI). A job
imports the shared layer, never another job; nothing here imports the demo model (`model/`).
"""

import os
import warnings

# TFT's transform layer and TFMA need Keras 2; TensorFlow 2.16 picks Keras 3 unless this is set
# before its first import, so the package sets it for every job and every user of the package.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# google-api-core warns about Python 3.11 support on every import; nothing a job's user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module="google")
