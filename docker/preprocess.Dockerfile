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

# The Beam job never imports torch, but the project's dependencies (torch, litgpt: the trainer's half)
# require it, and pip's default Linux torch wheel is the CUDA build (with several GB of NVIDIA
# libraries). The CPU build, installed first from PyTorch's own CPU index, satisfies the requirement.
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml setup.py README.md /opt/codec-lm/
COPY shared /opt/codec-lm/shared
COPY preprocess /opt/codec-lm/preprocess
COPY train /opt/codec-lm/train

# Installed (not editable) into the image's Python, where the Beam worker unpickles the job's
# functions from. The checks fail the build if a dependency swapped torch for a CUDA build or if the
# job cannot be imported.
RUN python -m pip install --no-cache-dir /opt/codec-lm \
    && python -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was installed'" \
    && python -c "import apache_beam, preprocess.run; print('apache-beam', apache_beam.__version__)"

# The Beam SDK harness: Dataflow and the portable runners start the container with its arguments.
ENTRYPOINT ["/opt/apache/beam/boot"]
