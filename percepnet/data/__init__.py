"""Training corpus and mixing recipe.

corpus: where the audio comes from (shared folder, Debian packages), screening,
        speaker/file-disjoint splits, the manifest and packed int16 caches.
rooms:  room impulse responses (synthetic image-method bank, measured RIRs) and
        the reverberant target (early reflections + a tail shortened to 200 ms).
noise:  synthetic noises (coloured, babble, hum, clicks).
mix:    MixtureGenerator (on-the-fly augmentation) and write_eval_set.
cli:    `percepnet data ...` (main_data).
"""

from percepnet.data.corpus import DataConfig, build_manifest, data_root, load_manifest
from percepnet.data.mix import MixConfig, Mixture, MixtureGenerator, write_eval_set

__all__ = [
    "DataConfig",
    "MixConfig",
    "Mixture",
    "MixtureGenerator",
    "build_manifest",
    "data_root",
    "load_manifest",
    "write_eval_set",
]
