"""rvdeploy: deploy ONNX LLMs to RISC-V 64 Linux boards through IREE."""

__version__ = "0.1.0"
