"""Training data for the 8 kHz telephone ASR model: texts, voices, telephone channel, manifests.

See docs/data.md. Entry point: ``python -m streaming_model.data generate --out data/train --hours 10``.
"""
