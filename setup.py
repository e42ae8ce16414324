"""Minimal packaging so remote Beam workers get this code: pass ``--setup_file ./setup.py`` to Dataflow.

Worker dependencies (soundfile, soxr, librosa, TensorFlow, ...) come from ``--requirements_file requirements.txt``
(or a custom container); this file only ships the ``core``, ``pipeline`` and ``model`` packages.
"""

import setuptools

setuptools.setup(
    name="hifigan-tf-toolkit",
    version="0.1.0",
    description="HiFi-GAN vocoder toolkit: Beam preprocessing, TensorFlow model and trainer",
    packages=["core", "pipeline", "model"],
    python_requires=">=3.10",
)
