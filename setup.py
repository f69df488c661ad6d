"""Batch ML pipelines on Apache Beam: ingest, validate, transform, train, evaluate, push."""

import setuptools

# The TFX library family is pinned to the 1.16 line: TFDV ships Linux wheels for Python 3.11
# only up to 1.16.1, and every other library must match it (see README "Pinned stack").
REQUIRED_PACKAGES = [
    "apache-beam[gcp,aws]==2.60.0",
    "click>=8.1,<9",
    # Privacy accounting (epsilon) of our DP-SGD; TensorFlow Privacy does not import with TF 2.16.
    # 0.5 and later pin attrs 23, older than the rest of the stack installs.
    "dp-accounting==0.4.4",
    # FairnessIndicators metric for TFMA 0.47 lives in this package (see README).
    "fairness-indicators==0.47.0",
    # Hyper-parameter search (model.tune). 1.3.5 is the last release on tf.keras, which is tf-keras
    # here; 1.4 imports Keras 3 (`import keras`) and refuses tf-keras models.
    "keras-tuner==1.3.5",
    # Report plots (calibration, ROC, PR) drawn as pictures, readable without Jupyter.
    "matplotlib>=3.8,<3.10",
    "numpy>=1.22,<2",
    "pyarrow==10.0.1",
    # Keras Tuner's BayesianOptimization needs scikit-learn (its Gaussian process); seen working.
    "scikit-learn==1.7.2",
    # tensorflow-hub 0.16 imports pkg_resources, which setuptools 81 and later no longer ship.
    "setuptools<81",
    "tensorflow==2.16.2",
    "tensorflow-data-validation==1.16.1",
    "tensorflow-hub>=0.16,<0.17",
    "tensorflow-metadata==1.16.1",
    "tensorflow-model-analysis==0.47.1",
    "tensorflow-transform==1.16.0",
    "tf-keras==2.16.0",
    "tfx-bsl==1.16.1",
]

# TensorFlow's s3:// file system (TensorFlow 2.16 has none): loaded only when a path is on s3://.
# 0.37.1 is the release for tensorflow 2.16 (cp311); it aborts at interpreter exit
# (tensorflow/io#2039), which beam_jobs.lib.filesystems.exit_process works around.
S3_PACKAGES = [
    "tensorflow-io==0.37.1",
]

DEV_PACKAGES = [
    *S3_PACKAGES,  # so CI runs the s3:// paths
    # S3 emulator of tests/test_object_stores.py (`python -m moto.server`); 5.2.5 adds packages
    # only, it moves none of the pins above (checked with pip's resolver).
    "moto[server]==5.2.5",
    "psutil>=5.9",  # peak memory of process trees in scripts/benchmark.py
    "pytest>=8",
    "ruff>=0.6",
]

setuptools.setup(
    name="beam-ml-pipelines",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["beam_jobs", "beam_jobs.*", "model", "model.*"]),
    package_data={"model": ["*.pbtxt"]},
    install_requires=REQUIRED_PACKAGES,
    extras_require={"dev": DEV_PACKAGES, "s3": S3_PACKAGES},
)
