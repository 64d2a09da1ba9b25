# The trainer's image: CUDA PyTorch, the project and LitGPT; it runs `python -m train.pretrain` (litgpt
# pretrain's CLI, the project's loop with FSDP2, sharded checkpoints and elastic resume; the paper's Jpeg-LM
# config unless told otherwise) and is ready for several nodes (NCCL comes with torch).
#
#   docker build -f docker/train.Dockerfile -t IMAGE .              (from the repository root)
#   docker run --gpus all --ipc=host IMAGE                          (= python -m train.pretrain --config train/jpeg7b.yaml)
#   docker run --gpus all --ipc=host IMAGE --config train/avc7b.yaml --devices 8 --num_nodes 4 --out_dir /ckpt/avc7b
#
# Across nodes, train.pretrain (train/launch.py, with Lightning's cluster environments) reads MASTER_ADDR,
# MASTER_PORT and NODE_RANK (it starts the 8 processes of a node itself), or SLURM's
# SLURM_NTASKS, SLURM_NTASKS_PER_NODE, SLURM_NNODES, SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID and
# SLURM_NODELIST under srun, or torchrun's RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
# docs/scale.md has the sbatch, torchrun and no-launcher forms.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# torch.compile (train.pretrain compiles each block) has Triton build a small C launcher at run time,
# and runtime images did not always carry a C compiler and libc headers.
# The base image's Ubuntu release fixes these packages' versions, and its tag is pinned:
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/codec-lm
COPY pyproject.toml setup.py README.md ./
COPY shared shared
COPY train train

# The shared core, the `train` extra (LitGPT, Lightning) and `cloud` (fsspec's gs:// and s3:// backends,
# through which the trainer reads shards); no Apache Beam. The base image's CUDA torch is pinned as a
# constraint, so that no dependency can replace it.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
    && python -m pip install --no-cache-dir --constraint /tmp/torch-constraint.txt ".[train,cloud]" \
    && rm /tmp/torch-constraint.txt \
    && python -c "import torch, litgpt, gcsfs, train.data; assert torch.version.cuda, 'torch lost its CUDA build'" \
    && python -c "import importlib.util as u; assert u.find_spec('apache_beam') is None, 'Beam was installed'"

# A non-root user by default (numeric, so any host resolves it); out/ (the configs' relative out_dir)
# is its. At scale pass --out_dir on shared storage; `docker run --user` or SLURM's container plugins
# run as the caller instead.
RUN useradd --create-home --uid 10001 --user-group --shell /bin/bash codec \
    && mkdir -p out \
    && chown 10001:10001 out
USER 10001:10001
ENV PYTHONUNBUFFERED=1

ENTRYPOINT ["python", "-m", "train.pretrain"]
CMD ["--config", "train/jpeg7b.yaml"]
