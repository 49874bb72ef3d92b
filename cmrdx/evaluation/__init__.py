"""How well a model does on labelled studies: labelled archives read once and their study embeddings cached
(``archive``), and the benchmarks run on them (``benchmarks``: zero-shot AUC, retrieval, few-shot, speed).
numpy only; the model runs through onnxruntime like a user's."""
