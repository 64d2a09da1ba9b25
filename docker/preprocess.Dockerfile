# The Beam SDK worker image of the preprocessing job (python -m preprocess.run): the project and its
# dependencies on top of the official Apache Beam Python SDK image, keeping its boot entrypoint.
#
#   docker build -f docker/preprocess.Dockerfile -t IMAGE .        (from the repository root)
#   Dataflow:     python -m preprocess.run --runner=DataflowRunner --sdk_container_image=IMAGE ...
#   Flink, Spark: python -m preprocess.run --runner=FlinkRunner --environment_type=DOCKER --environment_config=IMAGE ...
#
# The tag must be the apache-beam version pyproject.toml pins (the launcher and the workers must run
# the same Beam; tests/test_docker.py checks it), for the Python the job is launched with (3.11).
FROM apache/beam_python3.11_sdk:2.77.0

# The Beam job needs the shared core and its own half: the `preprocess` extra (Apache Beam, already in
# the base image at the same version) and `cloud` (fsspec's gs:// and s3:// backends, through which the
# job writes its shards). No torch, no LitGPT: those are the trainer's.
COPY pyproject.toml setup.py README.md /opt/codec-lm/
COPY shared /opt/codec-lm/shared
COPY preprocess /opt/codec-lm/preprocess

# Installed (not editable) into the image's Python, where the Beam worker unpickles the job's
# functions from. The checks fail the build if a dependency brought torch in or if the job cannot be
# imported.
RUN python -m pip install --no-cache-dir "/opt/codec-lm[preprocess,cloud]" \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch was installed'" \
    && python -c "import apache_beam, gcsfs, s3fs, preprocess.run; print('apache-beam', apache_beam.__version__)"

# The Beam SDK harness: Dataflow and the portable runners start the container with its arguments.
ENTRYPOINT ["/opt/apache/beam/boot"]
