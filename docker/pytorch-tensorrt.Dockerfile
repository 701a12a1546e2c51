# PyTorch + TensorRT (with trtexec) from NVIDIA's NGC catalogue, plus this project's requirements.
#   docker build -f docker/pytorch-tensorrt.Dockerfile -t eager2trt .
#   docker run --gpus all --rm -it -v "$PWD":/workspace/eager2trt -w /workspace/eager2trt eager2trt
# Choose another NGC release with --build-arg BASE_TAG=YY.MM-py3 (the TensorRT container ships trtexec).
ARG BASE_TAG=25.10-py3
FROM nvcr.io/nvidia/tensorrt:${BASE_TAG}

WORKDIR /workspace/eager2trt
COPY requirements.txt .
# tensorrt comes with the base image; the rest are the project's pinned requirements
RUN python3 -m pip install --no-cache-dir -r requirements.txt
ENV PATH="/usr/src/tensorrt/bin:${PATH}"
COPY . .
CMD ["bash"]
