"""The ground floor for compressed models: what a quantized or low-rank model is made of and how
it runs and loads. Integer weights on a grid (`qweight`), their packing (`pack`), the integer-
kernel linears and embeddings (`kernels`, `embedding`, the native C kernel in `native`), fused
sibling linears (`fuse`), low-rank linears (`lowrank`), whole-model questions (`modules`), the
compressed-tensors checkpoint format (`checkpoint`) and CPU feature probes (`cpu`).

It imports nothing else of slmkit but `slmkit.errors`, so models/, data/ and eval/ can use it.
"""
