"""Names of the streaming ONNX graph's inputs and outputs, shared by the export
(model.py, export.py) and the inference (runtime.py) so neither reads by position.

Torch-free: the server image imports this through runtime.py.
"""

from __future__ import annotations

INPUT_FEATURES = "features"
"""Input: one frame of features per stream [streams, NB_FEATURES]."""

OUTPUT_GAINS = "gains"
"""Output: band gains g [streams, NB_BANDS]."""

OUTPUT_STRENGTHS = "strengths"
"""Output: pitch-filter strengths r [streams, NB_BANDS]."""

STATE = "state"
"""The exported graph's one state tensor [streams, state_size()] (input)."""

STATE_SUFFIX = "_out"
"""A state input NAME comes back as the output NAME + STATE_SUFFIX."""
