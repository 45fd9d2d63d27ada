# `alexc import` (label 'onnx'): ONNX models exported from PyTorch by
# tests/onnx/make_onnx.py, imported, run and compared with PyTorch's outputs, and the
# models it must refuse (tests/onnx/run.sh).
alexc_shell_test(onnx.import onnx/run.sh onnx)
