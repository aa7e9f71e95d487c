"""Evaluation: the paper's benchmarks (VideoMME, MLVU, EgoSchema, MVBench) and a video needle-in-a-haystack.

* :mod:`.benchmarks` - loaders for each benchmark's published layout, with the original
  evaluation scripts' frame sampling and thresholds as named presets;
* :mod:`.answers` - the multiple-choice prompt and answer parsing (an unparseable answer
  is wrong, and reported, never mapped to a letter);
* :mod:`.runner` - resumable runs, one JSONL line per question, summaries;
* :mod:`.store` - the results folder: atomic rewrites, a lock, the settings fingerprint;
* :mod:`.workers` - answering on local worker processes or Ray actors, replacing dead ones;
* :mod:`.vniah` - V-NIAH haystack generator, scorer and heatmap.
"""
