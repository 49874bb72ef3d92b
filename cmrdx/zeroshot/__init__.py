"""Embeddings -> findings: prompt banks (``bank``: schema, loading, lint), scoring of a study embedding against
a bank (``scoring``), thresholds (``calibration``), few-shot prototypes (``fewshot``) and the tools that let a
cardiologist author and calibrate banks (``authoring``). numpy only."""
