"""DSP constants of the PercepNet signal path, each derived from the ones above it.

Every other module imports these names; the bare numbers do not appear elsewhere.
Symbols follow the paper: Y noisy spectrum, X clean, P pitch-filtered, E band
energy, g band gain, r pitch-filter strength, q pitch coherence, T pitch period.
"""

from __future__ import annotations

SAMPLE_RATE = 48_000
"""Internal rate (Hz): all audio inside percepnet/ is mono float32 at this rate."""

FRAME_SIZE = 480
"""Hop N in samples (10 ms): one enhancer call consumes and returns this many."""

WINDOW_SIZE = 2 * FRAME_SIZE
"""Analysis/synthesis window (20 ms), 50 % overlap."""

NB_BINS = WINDOW_SIZE // 2 + 1
"""Real-FFT bins (481), spaced SAMPLE_RATE / WINDOW_SIZE = 50 Hz apart."""

BIN_HZ = SAMPLE_RATE / WINDOW_SIZE
"""Width of one FFT bin in Hz (50)."""

NB_BANDS = 34
"""Triangular ERB bands covering 0 to MAX_BAND_HZ."""

MAX_BAND_HZ = 20_000.0
"""Centre of the last band; bins above it follow that band."""

MIN_BAND_BINS = 2
"""No band narrower than 2 bins (100 Hz) between neighbouring centres."""

PITCH_MIN = 60
"""Shortest pitch period in samples (800 Hz)."""

PITCH_MAX = 768
"""Longest pitch period in samples (62.5 Hz)."""

COMB_PERIODS = 5
"""Comb filter reaches K periods each side of the current sample (2K+1 taps)."""

LOOKAHEAD_FRAMES = 2
"""M: frames of future input the pitch decision and network may use (20 ms)."""

LOOKAHEAD_SAMPLES = LOOKAHEAD_FRAMES * FRAME_SIZE
"""Future samples available to the comb filter beyond the current window."""

LATENCY_SAMPLES = (WINDOW_SIZE - FRAME_SIZE) + LOOKAHEAD_SAMPLES
"""Algorithmic delay (1440 samples = 30 ms): window overlap plus lookahead."""

LATENCY_MS = 1000.0 * LATENCY_SAMPLES / SAMPLE_RATE

PACKET_FRAMES = 2
"""Enhancer frames in one 20 ms packet, what WebRTC's Opus path carries per frame."""

PACKET_SAMPLES = PACKET_FRAMES * FRAME_SIZE
"""Samples of one 20 ms packet at SAMPLE_RATE (960)."""

BLOCK_STEPS = 256
"""Steps the whole-signal paths analyse at once (bounds their memory to ~60 MB)."""

INT16_SCALE = 32768.0
"""Full scale of 16-bit PCM: float x in [-1, 1) is int16 x * INT16_SCALE (clip first)."""

NB_FEATURES = 2 * NB_BANDS + 2
"""Per-frame network input: log band energies, pitch coherences, period, correlation."""

NB_OUTPUTS = 2 * NB_BANDS
"""Per-frame network output: band gains g and pitch-filter strengths r."""

HISTORY_SAMPLES = COMB_PERIODS * PITCH_MAX
"""Past input kept before the oldest window so every past comb tap is available."""

BUFFER_SAMPLES = HISTORY_SAMPLES + WINDOW_SIZE + LOOKAHEAD_SAMPLES
"""Streaming input buffer: comb history, the frame being synthesised, lookahead."""

POSTFILTER_BETA = 0.02
"""Envelope postfilter loudness-restoration constant (paper)."""

EXTRA_ATTENUATION_N0 = 0.03
"""n0 of the oracle's extra attenuation when filtering cannot restore periodicity."""

EPS = 1e-9
"""Floor for energy divisions (squared full-scale units)."""
