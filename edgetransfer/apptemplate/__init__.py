"""Sources of the sample app that ``edgetransfer app BUNDLE --target T`` writes into ``BUNDLE/app/``
(:mod:`edgetransfer.appgen`). They import nothing from edgetransfer: on the board they need only
numpy, Pillow and one runtime (onnxruntime, ai-edge-litert / tflite-runtime, or TensorRT)."""
