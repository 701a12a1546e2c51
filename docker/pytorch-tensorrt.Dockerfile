# PyTorch + TensorRT (with trtexec) from NVIDIA's NGC catalogue, plus this project's requirements.
#   docker build -f docker/pytorch-tensorrt.Dockerfile -t eager2trt .
#   docker run --gpus all --rm -it -v "$PWD":/workspace/eager2trt -w /workspace/eager2trt eager2trt
# Choose another NGC release with --build-arg BASE_TAG=YY.MM-py3 (the TensorRT container ships trtexec).
ARG BASE_TAG=25.10-py3
FROM nvcr.io/nvidia/tensorrt:${BASE_TAG}
# an ARG before FROM is visible after it only when declared again
ARG BASE_TAG

WORKDIR /workspace/eager2trt
COPY requirements.txt .
# tensorrt comes with the base image; the rest are the project's pinned requirements
RUN python3 -m pip install --no-cache-dir -r requirements.txt
# NGC images put trtexec under /opt/tensorrt/bin or /usr/src/tensorrt/bin, depending on the release.
# EAGER2TRT_REQUIRE_TENSORRT=1: inside this image scripts/run_pipeline.sh and tests/test_tensorrt.py fail,
# rather than skip, when trtexec, tensorrt or the GPU is missing.
# PYTHON: the quick-start scripts use the image's Python (which has tensorrt) instead of creating .venv.
ENV PATH="/opt/tensorrt/bin:/usr/src/tensorrt/bin:${PATH}" \
    EAGER2TRT_REQUIRE_TENSORRT=1 \
    PYTHON=python3
# fail the build, not a later run, when this base image lacks trtexec or the tensorrt module
RUN command -v trtexec || { echo "error: no trtexec in /opt/tensorrt/bin, /usr/src/tensorrt/bin or PATH of nvcr.io/nvidia/tensorrt:${BASE_TAG}; choose another BASE_TAG" >&2; exit 1; } \
 && python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)"
COPY . .
# the package itself, editable, so a checkout mounted over this folder is what runs
RUN python3 -m pip install --no-cache-dir --no-deps -e .
CMD ["bash"]
