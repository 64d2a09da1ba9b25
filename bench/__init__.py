"""Benchmarks: each prints a ratio against a baseline measured in the same run. Run as `python -m bench.NAME`."""

from __future__ import annotations


def job_flags(**options: object) -> list[str]:
    """``preprocess.run``'s command line for ``options`` (``seq_len=1023`` -> ``["--seq_len", "1023"]``).

    Beam drops a flag it does not know without a word, so a benchmark that misspelled one would measure
    another job: each flag is checked to be one the job or Beam reads.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    import preprocess.options  # noqa: F401 (registers the job's options with Beam)

    argv = [token for name, value in options.items() for token in (f"--{name}", str(value))]
    known = PipelineOptions(argv).get_all_options(retain_unknown_options=False)
    unknown = [f"--{name}" for name in options if name not in known]
    if unknown:
        raise ValueError(f"preprocess.run reads no {', '.join(unknown)}")
    return argv
