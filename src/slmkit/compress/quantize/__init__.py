"""Weight quantization math (tensor in, tensor out); lifecycle glue lives in compress/calibrate.py."""
