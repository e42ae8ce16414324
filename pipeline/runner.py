"""Running the preprocessing job: checks before it starts, Beam's options, the run, the commit of its dataset.

``run(config, options, beam_args)`` is the job's entry point (see :mod:`pipeline.transforms` for its steps). On
DirectRunner the job runs multi_threading by default (:func:`local_defaults`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from core.config import HiFiGANConfig
from core.errors import INTERRUPTED_STATUS, UserError
from core.manifest import Manifest
from core.storage import check_directory, check_filesystem, check_writable, first_line
from pipeline.commit import check_replaceable, commit, committed_shards, delete_leftovers
from pipeline.job_errors import failures_as_one_line
from pipeline.options import PreprocessOptions
from pipeline.transforms import build_pipeline


class PreprocessError(UserError):
    """A job that cannot start (e.g. an unknown Beam runner); the message is one line."""


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


def clean_after_failure(output_dir: str) -> None:
    """Deletes what a failed job left beside the committed dataset; a failure to do so only warns (the next job
    cleans up before it starts)."""
    try:
        delete_leftovers(output_dir, committed_shards(output_dir))
    except Exception as e:  # noqa: BLE001 the job's own error is the one to report
        logging.warning("%s: could not delete what the failed job left (%s)", output_dir, first_line(e))


@contextlib.contextmanager
def interrupt_ends_process(message: str | None):
    """With ``message``: while in this block, Ctrl-C (SIGINT) prints it on stderr and ends the process at once
    with INTERRUPTED_STATUS. Without (or outside the main thread): Python's KeyboardInterrupt.

    NOTE: Beam's runners leave their worker threads running on KeyboardInterrupt, and those log tracebacks as the
    runner's state is torn down under them. Ending the process at once is what kill -9 does, which the dataset's
    commit survives (pipeline/commit.py); the next job deletes what this one left.
    """
    if message is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(signum, frame):
        sys.stdout.flush()
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        os._exit(INTERRUPTED_STATUS)

    previous = signal.signal(signal.SIGINT, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(config: HiFiGANConfig, options: PreprocessOptions, beam_args: list[str] | None = None,
        interrupted: str | None = None) -> Manifest:
    """Builds and runs the job with Beam options ``beam_args`` (runner flags, see :func:`local_defaults`), then
    commits the dataset it wrote (see :mod:`pipeline.commit`); returns the committed manifest.

    PreprocessError, PathError, FilelistError or DatasetError (one line each) before the job starts for a runner
    Beam does not know, a path Beam cannot use, a missing local audio root or teacher mel directory, an unreadable
    filelist, or an output directory holding a dataset of another kind (unless ``options.overwrite``).
    DatasetError after the job for a split that rejected too much (nothing committed), CommitError for a commit
    that failed; either way the output directory keeps its last committed dataset. ``interrupted``: the line a
    Ctrl-C while the job runs or commits prints before the process ends (:func:`interrupt_ends_process`).
    """
    pipeline_options = PipelineOptions(local_defaults(beam_args or []))
    FileSystems.set_options(pipeline_options)
    p = make_pipeline(pipeline_options)
    check_paths(options)
    build_pipeline(p, config, options)
    check_writable(options.output_dir)
    output_dir = options.output_dir
    committed = check_replaceable(output_dir, Manifest.new(config.audio, options.audio_encoding,
                                                           bool(options.base_mels_path)), options.overwrite)
    delete_leftovers(output_dir, committed)  # what a killed or failed job left
    with interrupt_ends_process(interrupted):
        try:
            result = None
            try:
                with failures_as_one_line():
                    result = p.run()
                    result.wait_until_finish()
            finally:
                # NOTE: Beam's DaskRunner opens a dask Client and never closes it, even when the job fails;
                # closing it lets the cluster shut down quietly.
                client = getattr(result, "client", None)
                if client is not None:
                    client.close()
            return commit(config, output_dir, options.max_rejected_fraction)
        except UserError:
            clean_after_failure(output_dir)
            raise
