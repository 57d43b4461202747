"""The synthetic text-line OCR recognizer of tools/bench_ocr.py: renderer, CRNN model, CTC training."""
