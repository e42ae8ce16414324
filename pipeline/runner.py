"""Running the preprocessing job: checks before it starts, Beam's options, the run, the manifest it leaves.

``run(config, options, beam_args)`` is the job's entry point (see :mod:`pipeline.transforms` for its steps). On
DirectRunner the job runs multi_threading by default (:func:`local_defaults`).
"""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core.config import HiFiGANConfig
from core.errors import UserError
from core.manifest import MANIFEST_NAME, Manifest
from core.storage import BEAM_IO, check_directory, check_filesystem, check_writable, first_line, read_bytes
from pipeline.options import PreprocessOptions
from pipeline.transforms import build_pipeline


class PreprocessError(UserError):
    """A job that cannot start (e.g. an unknown Beam runner); the message is one line."""


def read_manifest(output_dir: str) -> Manifest:
    """The manifest.json a finished job left in ``output_dir``."""
    return Manifest.from_json(read_bytes(FileSystems.join(output_dir, MANIFEST_NAME), BEAM_IO).decode("utf-8"))


def local_defaults(beam_args: list[str]) -> list[str]:
    """``beam_args`` with this job's defaults for Beam's DirectRunner: multi_threading, one thread per core.

    NOTE: Beam's own default is in_memory, one thread. The DSP (libsndfile, numpy, pocketfft, sparse products)
    runs almost entirely without the GIL, so threads scale on a few cores, with no worker start-up (~3 s of
    processes importing Beam, numpy and scipy) and one process's memory. On many cores, multi_processing with one
    worker per core scales further (pass ``--direct_running_mode multi_processing --direct_num_workers 0``).
    An explicit ``--direct_running_mode`` and any other runner are left alone.
    """
    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or "DirectRunner"
    flags = {arg.split("=", 1)[0] for arg in beam_args}
    if runner.lower() not in ("direct", "directrunner") or "--direct_running_mode" in flags:
        return list(beam_args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = [] if "--direct_num_workers" in flags else ["--direct_num_workers", str(cores)]
    return list(beam_args) + ["--direct_running_mode", "multi_threading"] + workers


def make_pipeline(pipeline_options: PipelineOptions) -> beam.Pipeline:
    """A Beam pipeline on the options' runner; PreprocessError (one line) for a runner Beam cannot make."""
    try:
        return beam.Pipeline(options=pipeline_options)
    except (ValueError, ImportError, AttributeError, TypeError) as e:  # what Beam's create_runner raises
        runner = pipeline_options.view_as(StandardOptions).runner
        raise PreprocessError(f"cannot use Beam runner {runner}: {first_line(e, innermost=False, with_type=False)}") from None


def check_paths(options: PreprocessOptions) -> None:
    """PathError (one line) now, not a worker's traceback later, for a path whose filesystem Beam cannot use
    here or a missing local teacher mel directory (the filelists: when build_pipeline reads them)."""
    paths = {options.output_dir: "output directory", options.audio_root: "audio root",
             options.base_mels_path: "teacher mel directory"}
    for path, what in paths.items():
        if path is not None:
            check_filesystem(path, what)
    # NOTE: a missing local directory would otherwise reject every line as missing and still exit 0.
    if options.base_mels_path:
        check_directory(options.base_mels_path, "teacher mel directory")


def run(config: HiFiGANConfig, options: PreprocessOptions, beam_args: list[str] | None = None) -> Manifest:
    """Builds and runs the job with Beam options ``beam_args`` (runner flags, see :func:`local_defaults`); returns
    the written manifest.

    PreprocessError, PathError or FilelistError (one line each) before the job starts for a runner Beam does not
    know, a path Beam cannot use, a missing local audio root or teacher mel directory, or an unreadable filelist.
    """
    pipeline_options = PipelineOptions(local_defaults(beam_args or []))
    FileSystems.set_options(pipeline_options)
    p = make_pipeline(pipeline_options)
    check_paths(options)
    build_pipeline(p, config, options)
    check_writable(options.output_dir)
    result = p.run()
    result.wait_until_finish()
    # NOTE: Beam's DaskRunner opens a dask Client and never closes it; closing it lets the cluster shut down quietly.
    client = getattr(result, "client", None)
    if client is not None:
        client.close()
    return read_manifest(options.output_dir)
