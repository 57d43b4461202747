"""OCR recognizers for the benchmarks: the synthetic text-line CRNN of tools/bench_ocr.py (renderer,
model, CTC training), ddddocr's captcha reader (an opt-in asset), and exact-string metrics.

Scripts put tools/ on sys.path and import ``ocr.*``; ``--metric tools.ocr.exact_metric:exact``
imports the same files as ``tools.ocr`` from the repository root.
"""
