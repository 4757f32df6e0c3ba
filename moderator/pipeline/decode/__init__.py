"""Image bytes to the model's pixels: `cpu` (Pillow, every format), `png` (a fast path for plain
PNGs), `gpu` (nvImageCodec JPEG decoding with `resize` graphs), `prepare` and `pool` (the worker
processes that keep decoding off the event loop)."""
